"""Leases on SQLite and PostgreSQL: one holder at a time, fencing epochs, races decided by
the database (threads with their own engines stand in for separate processes)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from tidecast.db.leases import Leases
from tidecast.db.repo import Database

NAME = "packager/main"


@pytest.fixture
def leases(db_url: str) -> Iterator[Leases]:
    db = Database(db_url)
    try:
        yield Leases(db)
    finally:
        db.close()


def test_one_holder_at_a_time_with_fencing_epochs(leases: Leases) -> None:
    assert leases.holder(NAME) is None
    assert leases.acquire(NAME, "p1", 10.0, now=100.0) == 1  # first one wins
    assert leases.holder(NAME) == ("p1", 1, 110.0)
    assert leases.acquire(NAME, "p2", 10.0, now=105.0) is None  # refused while live
    assert leases.acquire(NAME, "p2", 10.0, now=110.0) is None  # still live at its last instant
    assert leases.holder(NAME) == ("p1", 1, 110.0)

    # renewal by the holder keeps the epoch, both ways
    assert leases.acquire(NAME, "p1", 10.0, now=108.0) == 1
    assert leases.renew(NAME, "p1", 1, 10.0, now=115.0)
    assert leases.holder(NAME) == ("p1", 1, 125.0)

    # p1 stalls past expiry: p2 takes over with a higher epoch, p1 cannot come back
    assert leases.acquire(NAME, "p2", 10.0, now=126.0) == 2
    assert not leases.renew(NAME, "p1", 1, 10.0, now=127.0)
    assert leases.acquire(NAME, "p1", 10.0, now=127.0) is None
    assert leases.holder(NAME) == ("p2", 2, 136.0)

    # a renewal needs the right epoch and a lease that has not run out
    assert not leases.renew(NAME, "p2", 1, 10.0, now=128.0)
    assert not leases.renew(NAME, "p2", 2, 10.0, now=137.0)
    assert leases.holder(NAME) == ("p2", 2, 136.0)

    # the same holder taking a lapsed, unclaimed lease again keeps its epoch
    assert leases.acquire(NAME, "p2", 10.0, now=140.0) == 2


def test_release_lets_another_take_it_at_once(leases: Leases) -> None:
    assert leases.acquire(NAME, "p1", 60.0, now=100.0) == 1
    leases.release(NAME, "p2")  # not p2's to give up: nothing changes
    assert leases.acquire(NAME, "p2", 60.0, now=101.0) is None
    leases.release(NAME, "p1")
    assert leases.acquire(NAME, "p2", 60.0, now=102.0) == 2
    assert not leases.renew(NAME, "p1", 1, 60.0, now=103.0)
    leases.release("never/taken", "p1")  # harmless
    assert leases.holder("never/taken") is None


def test_names_are_independent(leases: Leases) -> None:
    assert leases.acquire("packager/a", "p1", 10.0, now=100.0) == 1
    assert leases.acquire("packager/b", "p2", 10.0, now=100.0) == 1
    assert leases.holder("packager/a") == ("p1", 1, 110.0)
    assert leases.holder("packager/b") == ("p2", 1, 110.0)


def test_default_now_is_the_wall_clock(leases: Leases) -> None:
    assert leases.acquire(NAME, "p1", 30.0) == 1
    assert leases.acquire(NAME, "p2", 30.0) is None
    assert leases.renew(NAME, "p1", 1, 30.0)


def _race(
    db_url: str, n: int, take: Callable[[Leases, str], int | None], prefix: str = "p"
) -> dict[str, int | None]:
    """n "processes" (own Database and engine each) call ``take`` at the same moment."""
    barrier = threading.Barrier(n)
    results: dict[str, int | None] = {}
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
        now = 1000.0 * (round_ + 1)
        results = _race(
            db_url, 8, lambda ls, h, now=now: ls.acquire(NAME, h, 10.0, now=now), f"r{round_}-"
        )
        winners = [(h, e) for h, e in results.items() if e is not None]
        assert len(winners) == 1, results
        [(winner, epoch)] = winners
        assert epoch == round_ + 1  # a new holder each round, after the last one released it
        assert leases.holder(NAME) == (winner, epoch, now + 10.0)
        leases.release(NAME, winner)


def test_racing_to_take_over_an_expired_lease_exactly_one_wins(leases: Leases, db_url: str) -> None:
    assert leases.acquire(NAME, "stalled", 10.0, now=100.0) == 1
    results = _race(db_url, 8, lambda ls, h: ls.acquire(NAME, h, 10.0, now=200.0))
    winners = {h: e for h, e in results.items() if e is not None}
    assert list(winners.values()) == [2], results
    assert not leases.renew(NAME, "stalled", 1, 10.0, now=201.0)
