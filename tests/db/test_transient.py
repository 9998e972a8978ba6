"""Transient database errors: told apart from real ones on errors the real engines raise,
and ridden out by ``transient.call`` while a PostgreSQL server of the test's own is
stopped for a few seconds (calls fail fast while it is down, succeed once it is back)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from tests.services import PrivatePostgres, free_port, pg_database

from tidecast.db import BroadcastNotFound, StaleEpoch, is_transient, transient
from tidecast.db.leases import Fence
from tidecast.db.recordings import Recordings, SegmentRow
from tidecast.db.repo import Database
from tidecast.metrics import Registry


def seg(seq: int) -> SegmentRow:
    return SegmentRow("360p", seq, 0, 2.0 * seq, 2.0, "i", f"s{seq}", 1000, False, "avc1", 640, 360,
                      30.0, 100.0 + 2 * seq)  # fmt: skip


def _raised(fn: object) -> BaseException:
    try:
        fn()  # type: ignore[operator]
    except Exception as exc:  # noqa: BLE001 - what it raised is the point
        return exc
    raise AssertionError("it did not raise")


def test_sqlite_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    db = Database(url)
    try:
        # another process holds the write lock past our busy timeout: worth retrying
        blocker = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        impatient = create_engine(url, connect_args={"timeout": 0.05})
        with impatient.connect() as c:
            locked = _raised(lambda: c.exec_driver_sql("BEGIN IMMEDIATE"))
        impatient.dispose()
        blocker.execute("ROLLBACK")
        blocker.close()
        assert isinstance(locked, OperationalError) and "locked" in str(locked)
        assert is_transient(locked)

        with db.engine.connect() as c:
            missing = _raised(lambda: c.execute(text("SELECT * FROM no_such_table")))
            syntax = _raised(lambda: c.execute(text("SELEC 1")))
        assert isinstance(missing, OperationalError) and not is_transient(
            missing
        )  # same class, not transient
        assert not is_transient(syntax)
        db.create_stream("s")
        with db.engine.begin() as c:
            dup = _raised(lambda: c.execute(text(
                "INSERT INTO streams (id, name, title, key_hash, created_at, recording, retention_mode, "
                "retention_value) VALUES (1, 'x', '', 'k', '2026-01-01', 1, 'forever', 0)")))  # fmt: skip
        assert isinstance(dup, IntegrityError) and not is_transient(dup)
    finally:
        db.close()
    for domain in (
        StaleEpoch(Fence("l", "h", 1), ("o", 2)),
        BroadcastNotFound("b"),
        ValueError("x"),
    ):
        assert not is_transient(domain)
    assert is_transient(TimeoutError())  # an attempt past its own time limit


def test_postgresql_errors() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x"  # nothing listens there
    refused = create_engine(url, **transient.engine_options(url))
    t0 = time.monotonic()
    down = _raised(refused.connect)
    assert isinstance(down, OperationalError) and is_transient(down)
    assert time.monotonic() - t0 < 5
    refused.dispose()
    with pg_database() as db_url:
        db = Database(db_url)
        try:
            with db.engine.connect() as c:
                bad = _raised(lambda: c.execute(text("SELECT * FROM no_such_table")))
            assert isinstance(bad, ProgrammingError) and not is_transient(bad)
        finally:
            db.close()


async def test_a_stopped_server_is_ridden_out(private_pg: PrivatePostgres) -> None:
    db = Database(private_pg.create_database())
    registry = Registry()
    try:
        rec = Recordings(db)
        db.create_stream("s")
        rec.start(1, "b1", datetime.now(UTC), "t", True)
        rec.record_segment("b1", seg(0))

        private_pg.stop()
        t0 = time.monotonic()
        err = _raised(lambda: rec.record_segment("b1", seg(1)))
        assert is_transient(err), repr(err)
        assert time.monotonic() - t0 < 5, "a call to a stopped server did not fail fast"

        # a call made while it is down, with a deadline past its return, succeeds
        t0 = time.monotonic()
        call = asyncio.create_task(transient.call("record_segment", rec.record_segment, "b1", seg(1),
                                                  deadline=20.0, registry=registry))  # fmt: skip
        await asyncio.sleep(3.0)
        assert not call.done()
        await asyncio.to_thread(private_pg.start)
        await asyncio.wait_for(call, 10)
        elapsed = time.monotonic() - t0
        assert 3.0 <= elapsed < 8.0, elapsed
        retries = registry.counter("tidecast_db_retries_total", "", ("op",))
        failures = registry.counter("tidecast_db_failures_total", "", ("op",))
        assert retries.value(op="record_segment") >= 2 and failures.value(op="record_segment") == 0
        assert [r.sequence for r in rec.segments("b1")] == [0, 1]

        # past its deadline a call gives up with the error, counted
        private_pg.stop()
        t0 = time.monotonic()
        with pytest.raises(OperationalError):
            await transient.call("record_segment", rec.record_segment, "b1", seg(2), deadline=1.0,
                                 registry=registry)  # fmt: skip
        assert time.monotonic() - t0 < 4
        assert failures.value(op="record_segment") == 1
        # a domain error is raised at once, not retried, not a database failure
        private_pg.start()
        with pytest.raises(StaleEpoch):
            await transient.call("record_segment", rec.record_segment, "b1", seg(2),
                                 fence=Fence("packager/s", "p1", 1), deadline=5.0, registry=registry)  # fmt: skip
        assert failures.value(op="record_segment") == 1
    finally:
        db.close()
