"""Packager leadership on the database-clock leases (``packager/leader.py``), on SQLite and
PostgreSQL, each packager with its own engine: a stand-by writes nothing to the database
while another packager holds the lease, and asks only when the lease may have expired;
it takes over promptly once the leader stops renewing; the old leader's fenced writes are
refused. On a server of the test's own that is stopped: the leader keeps its lease only
while it is valid locally, and leads again once the server is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from tests.services import PrivatePostgres

from tidecast.db import Fence, StaleEpoch
from tidecast.db.leases import Leases
from tidecast.db.recordings import Recordings
from tidecast.db.repo import Database
from tidecast.packager.leader import NotLeader, StreamLeadership

TTL = 0.6


@pytest.fixture
def two(db_url: str) -> Iterator[tuple[Database, Database]]:
    a, b = Database(db_url), Database(db_url)  # two processes
    yield a, b
    a.close()
    b.close()


def _statements(db: Database) -> list[str]:
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement.lstrip().split(None, 1)[0].upper())

    event.listen(db.engine, "before_cursor_execute", record)
    return seen


async def test_a_stand_by_writes_nothing_then_takes_over_promptly(
    two: tuple[Database, Database],
) -> None:
    da, db_ = two
    a, b = StreamLeadership(Leases(da), TTL, "a"), StreamLeadership(Leases(db_), TTL, "b")
    lost: list[str] = []

    def broken_listener(stream: str) -> None:
        raise RuntimeError("a listener's bug")

    a.on_lost += [broken_listener, lost.append]  # the bug does not keep the next one uninformed
    a.start()
    b.start()
    try:
        assert await a.try_lead("s") and a.epoch("s") == 1
        assert a.fence("s") == Fence("packager/s", "a", 1)
        statements = _statements(db_)

        # a message of the stream every 10 ms for 3 lease times: the leader renews, the
        # stand-by never leads, never writes, and reads only when the lease may be free
        messages = 0
        end = time.monotonic() + 3 * TTL
        while time.monotonic() < end:
            assert not await b.try_lead("s") and not b.leads("s")
            assert a.leads("s")
            messages += 1
            await asyncio.sleep(0.01)
        assert not b.may_try("s")  # it knows the lease is not free yet
        writes = [s for s in statements if s in ("INSERT", "UPDATE", "DELETE")]
        assert writes == [], statements
        # first ask, then about one read per renewal period of the leader (2/3 of the ttl)
        assert 1 <= len(statements) <= 3 / (2 / 3 * 0.9) + 2, (len(statements), messages)
        assert messages > 50

        # the leader stops renewing (paused or dead; no release): the stand-by takes over
        # within what was left of the lease, at the next epoch
        assert a._task is not None
        a._task.cancel()
        stopped = time.monotonic()
        while not await b.try_lead("s"):
            assert time.monotonic() - stopped < 3 * TTL, "the stand-by did not take over"
            await asyncio.sleep(0.01)
        assert time.monotonic() - stopped <= TTL + 0.3
        assert b.epoch("s") == 2 and b.fence("s") == Fence("packager/s", "b", 2)

        # the old leader's fenced writes are refused; told so, it drops the stream at once
        rec = Recordings(da)
        with pytest.raises(StaleEpoch):
            rec.end("any", datetime.now(UTC), "ended", fence=a.fence("s"))
        a.lost("s")
        assert lost == ["s"] and not a.leads("s") and a.epoch("s") is None
        with pytest.raises(NotLeader):
            a.fence("s")
        rec.end(
            "any", datetime.now(UTC), "ended", fence=b.fence("s")
        )  # the new leader's go through
    finally:
        await b.aclose()
        await a.aclose()


async def test_a_crashed_renewal_loop_is_restarted(tmp_path: Path) -> None:
    ttl = 1.5
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    a = StreamLeadership(Leases(db), ttl, "a")
    real, crashes = a.renew_all, [0]

    async def renew_all_crashing_once() -> None:
        if not crashes[0]:
            crashes[0] += 1
            raise RuntimeError("a bug in the renewal loop")
        await real()

    a.renew_all = renew_all_crashing_once  # type: ignore[method-assign]
    a.start()
    try:
        assert await a.try_lead("s")
        await asyncio.sleep(2 * ttl)  # past the lease: only renewals keep it
        assert a.leads("s") and crashes == [1]
        assert a._sup is not None and a._sup.crash_count == 1
    finally:
        await a.aclose()
        db.close()


async def test_leases_of_other_streams_are_independent(two: tuple[Database, Database]) -> None:
    da, db_ = two
    a, b = StreamLeadership(Leases(da), TTL, "a"), StreamLeadership(Leases(db_), TTL, "b")
    try:
        results = await asyncio.gather(a.try_lead("s1"), b.try_lead("s2"), a.try_lead("s3"))
        assert results == [True, True, True]
        assert not await b.try_lead("s1") and not await a.try_lead("s2")
        assert (a.epoch("s1"), b.epoch("s2"), a.epoch("s3")) == (1, 1, 1)
        await a.aclose()  # a clean stop releases: the stand-by may take over at once
        assert await b.try_lead("s1", force=True) and b.epoch("s1") == 2
    finally:
        await b.aclose()
        await a.aclose()


async def test_a_database_outage_keeps_the_lease_only_while_locally_valid(
    private_pg: PrivatePostgres,
) -> None:
    ttl = 1.5
    db = Database(private_pg.create_database())
    a = StreamLeadership(Leases(db), ttl, "a")
    lost: list[str] = []
    a.on_lost.append(lost.append)
    a.start()
    try:
        assert await a.try_lead("s")
        epoch = a.epoch("s")
        await asyncio.sleep(ttl)  # renewed at least twice meanwhile
        await asyncio.to_thread(private_pg.stop)
        stopped = time.monotonic()
        while a.leads("s"):
            await asyncio.sleep(0.02)
            assert time.monotonic() - stopped < ttl + 1, "kept leading past its lease"
        assert (
            time.monotonic() - stopped <= ttl * 0.9 + 0.1
        )  # never past the last renewal's validity
        deadline = time.monotonic() + ttl
        while not lost and time.monotonic() < deadline:  # noqa: ASYNC110 - the renewal loop drops it
            await asyncio.sleep(0.02)
        assert lost == ["s"] and a.epoch("s") is None
        assert not await a.try_lead("s", force=True)  # the database is down: not now, no error

        await asyncio.to_thread(private_pg.start)
        deadline = time.monotonic() + 10
        while not await a.try_lead("s"):
            assert time.monotonic() < deadline, "did not lead again once the database was back"
            await asyncio.sleep(0.05)
        assert a.epoch("s") == epoch  # nobody took it meanwhile: the same epoch
    finally:
        await a.aclose()
        db.close()
