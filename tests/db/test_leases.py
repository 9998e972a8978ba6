"""Leases on SQLite and PostgreSQL: one holder at a time, fencing epochs, expiry judged on
the database's clock alone (a host's wall clock, however wrong, changes nothing), races
decided by the database (threads with their own engines stand in for separate processes).

Time passes here the way it does for holders: on the database clock. To let a lease
run out without waiting, ``_age`` moves its expiry back (as if ``seconds`` had passed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import update

from tidecast.db.leases import Grant, Leases
from tidecast.db.models import Lease
from tidecast.db.repo import Database

NAME = "packager/main"


@pytest.fixture
def leases(db_url: str) -> Iterator[Leases]:
    db = Database(db_url)
    try:
        yield Leases(db)
    finally:
        db.close()


def _age(leases: Leases, name: str, seconds: float) -> None:
    """As if ``seconds`` had passed on the database clock for this lease."""
    with leases.db.engine.begin() as conn:
        conn.execute(
            update(Lease).where(Lease.name == name).values(expires_at=Lease.expires_at - seconds)
        )


def test_one_holder_at_a_time_with_fencing_epochs(leases: Leases) -> None:
    assert leases.holder(NAME) is None
    g = leases.acquire(NAME, "p1", 10.0)
    assert (g.granted, g.holder, g.epoch, g.ours) == (True, "p1", 1, 1)  # first one wins
    refused = leases.acquire(NAME, "p2", 10.0)
    assert (refused.granted, refused.holder, refused.epoch, refused.ours) == (False, "p1", 1, None)
    assert 9.0 < refused.expires_in <= 10.0  # when it can be free, on the database clock

    # renewal by the holder keeps the epoch, both ways
    assert leases.acquire(NAME, "p1", 10.0).ours == 1
    assert leases.renew(NAME, "p1", 1, 10.0)
    _age(leases, NAME, 9.0)
    assert leases.acquire(NAME, "p2", 10.0).ours is None  # one second left: still p1's

    # p1 stalls past expiry: p2 takes over with a higher epoch, p1 cannot come back
    _age(leases, NAME, 2.0)
    held = leases.holder(NAME)
    assert held is not None and held[:2] == ("p1", 1) and held[2] < 0  # expired a second ago
    assert leases.acquire(NAME, "p2", 10.0).ours == 2
    assert not leases.renew(NAME, "p1", 1, 10.0)
    back = leases.acquire(NAME, "p1", 10.0)
    assert (back.granted, back.holder, back.epoch) == (False, "p2", 2)

    # a renewal needs the right epoch and a lease that has not run out
    assert not leases.renew(NAME, "p2", 1, 10.0)
    _age(leases, NAME, 11.0)
    assert not leases.renew(NAME, "p2", 2, 10.0)

    # the same holder taking a lapsed, unclaimed lease again keeps its epoch
    assert leases.acquire(NAME, "p2", 10.0).ours == 2


def test_refused_holders_learn_when_the_lease_expires(leases: Leases) -> None:
    assert leases.acquire(NAME, "p1", 30.0).granted
    _age(leases, NAME, 12.0)
    g = leases.acquire(NAME, "p2", 5.0)
    assert not g.granted and 17.0 < g.expires_in <= 18.0
    held = leases.holder(NAME)
    assert held is not None and 17.0 < held[2] <= 18.0
    with pytest.raises(ValueError):
        leases.acquire(NAME, "p2", 0.0)


def test_expiry_ignores_the_hosts_wall_clock(
    leases: Leases, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Holders whose clocks are 100 s off either way: the database alone decides."""
    real = time.time
    assert leases.acquire(NAME, "p1", 10.0).ours == 1

    monkeypatch.setattr(time, "time", lambda: real() + 100.0)  # this host runs 100 s ahead
    ahead = leases.acquire(NAME, "p2", 10.0)
    assert not ahead.granted and ahead.holder == "p1" and 9.0 < ahead.expires_in <= 10.0
    assert leases.renew(NAME, "p1", 1, 10.0)  # and ahead does not make the holder's lease lapse

    _age(leases, NAME, 11.0)  # now it has expired on the database clock
    monkeypatch.setattr(time, "time", lambda: real() - 100.0)  # this host runs 100 s behind
    assert not leases.renew(NAME, "p1", 1, 10.0)  # behind does not keep an expired lease
    assert leases.acquire(NAME, "p2", 10.0).ours == 2


def test_release_lets_another_take_it_at_once(leases: Leases) -> None:
    assert leases.acquire(NAME, "p1", 60.0).ours == 1
    leases.release(NAME, "p2")  # not p2's to give up: nothing changes
    assert leases.acquire(NAME, "p2", 60.0).ours is None
    leases.release(NAME, "p1")
    assert leases.acquire(NAME, "p2", 60.0).ours == 2
    assert not leases.renew(NAME, "p1", 1, 60.0)
    leases.release("never/taken", "p1")  # harmless
    assert leases.holder("never/taken") is None


def test_names_are_independent(leases: Leases) -> None:
    assert leases.acquire("packager/a", "p1", 10.0).ours == 1
    assert leases.acquire("packager/b", "p2", 10.0).ours == 1
    a, b = leases.holder("packager/a"), leases.holder("packager/b")
    assert a is not None and a[:2] == ("p1", 1)
    assert b is not None and b[:2] == ("p2", 1)


def test_a_refused_ask_about_a_held_lease_writes_nothing(leases: Leases) -> None:
    from sqlalchemy import event

    assert leases.acquire(NAME, "p1", 30.0).granted
    statements: list[str] = []
    event.listen(leases.db.engine, "before_cursor_execute",
                 lambda _c, _cur, stmt, *_a: statements.append(stmt.split(None, 1)[0].upper()))  # fmt: skip
    for _ in range(5):
        assert not leases.acquire(NAME, "p2", 30.0).granted
    assert statements and set(statements) == {"SELECT"}


def _race(
    db_url: str, n: int, take: Callable[[Leases, str], Grant], prefix: str = "p"
) -> dict[str, Grant]:
    """n "processes" (own Database and engine each) call ``take`` at the same moment."""
    barrier = threading.Barrier(n)
    results: dict[str, Grant] = {}
    errors: list[BaseException] = []

    def run(holder: str) -> None:
        db = Database(db_url)
        try:
            leases = Leases(db)
            leases.holder(NAME)  # connect before the start line: race the statement, not setup
            barrier.wait(timeout=30)
            results[holder] = take(leases, holder)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=run, args=(f"{prefix}{i}",)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(results) == n
    return results


def test_racing_for_a_free_lease_exactly_one_wins(leases: Leases, db_url: str) -> None:
    for round_ in range(3):
        results = _race(db_url, 8, lambda ls, h: ls.acquire(NAME, h, 10.0), f"r{round_}-")
        winners = [(h, g.epoch) for h, g in results.items() if g.granted]
        assert len(winners) == 1, results
        [(winner, epoch)] = winners
        assert epoch == round_ + 1  # a new holder each round, after the last one released it
        assert all(g.holder == winner and g.epoch == epoch for g in results.values())  # losers know
        held = leases.holder(NAME)
        assert held is not None and held[:2] == (winner, epoch)
        leases.release(NAME, winner)


def test_racing_to_take_over_an_expired_lease_exactly_one_wins(leases: Leases, db_url: str) -> None:
    assert leases.acquire(NAME, "stalled", 10.0).ours == 1
    _age(leases, NAME, 20.0)
    results = _race(db_url, 8, lambda ls, h: ls.acquire(NAME, h, 10.0))
    winners = {h: g.epoch for h, g in results.items() if g.granted}
    assert list(winners.values()) == [2], results
    assert not leases.renew(NAME, "stalled", 1, 10.0)
