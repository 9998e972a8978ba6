"""Fenced writes on SQLite and PostgreSQL: once another holder took a lease over, every
write made under the old epoch is refused and writes nothing; a takeover that starts
while a fenced write is in flight waits for it, so the write lands before the new epoch
exists, never after (separate engines stand in for separate processes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, update

from tidecast.db import StaleEpoch, transient
from tidecast.db.leases import Fence, Grant, Leases
from tidecast.db.models import Lease
from tidecast.db.recordings import Recordings, SegmentRow
from tidecast.db.repo import Database

NAME = "packager/s"


def seg(seq: int, gap: bool = False, rendition: str = "360p") -> SegmentRow:
    return SegmentRow(rendition, seq, 0, 2.0 * seq, 2.0, f"k/{rendition}/init.mp4",
                      f"k/{rendition}/{seq:06d}.m4s", 0 if gap else 1000, gap, "avc1.4d401e", 640,
                      360, 30.0, 100.0 + 2 * seq)  # fmt: skip


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    d = Database(db_url)
    d.create_stream("s")
    yield d
    d.close()


def _expire(db: Database, name: str = NAME) -> None:
    """The holder stalled past its lease: as if its time had run out on the database clock."""
    with db.engine.begin() as conn:
        conn.execute(
            update(Lease).where(Lease.name == name).values(expires_at=Lease.expires_at - 3600)
        )


class PausedWrite:
    """A fenced ``record_segment`` in a thread of its own that stops right after its
    INSERT (inside its transaction, the lease row share-locked) until ``go_on`` is set."""

    def __init__(self, db: Database, rec: Recordings, fence: Fence, hold: float) -> None:
        self.db, self.inserted, self.go_on = db, threading.Event(), threading.Event()
        self.errors: list[BaseException] = []
        self.hold = hold
        event.listen(db.engine, "after_cursor_execute", self._pause)
        self.thread = threading.Thread(target=self._write, args=(rec, fence))
        self.thread.start()
        assert self.inserted.wait(10), "the fenced write never reached its insert"

    def _pause(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO SEGMENTS"):
            self.inserted.set()
            assert self.go_on.wait(self.hold), "the test never let the write go on"

    def _write(self, rec: Recordings, fence: Fence) -> None:
        try:
            rec.record_segment("b1", seg(0), fence=fence)
        except BaseException as exc:  # noqa: BLE001 - reported by the test's assertions
            self.errors.append(exc)

    def finish(self) -> None:
        self.go_on.set()
        self.thread.join(10)
        if event.contains(self.db.engine, "after_cursor_execute", self._pause):
            event.remove(self.db.engine, "after_cursor_execute", self._pause)


def test_a_stale_epoch_writes_nothing_after_a_takeover(db: Database) -> None:
    rec, leases = Recordings(db), Leases(db)
    rec.start(1, "b1", datetime.now(UTC), "t", True)
    old = Fence(NAME, "p1", leases.acquire(NAME, "p1", 30.0).epoch)
    rec.record_segment("b1", seg(0), fence=old)
    rec.record_segment("b1", seg(1, gap=True), fence=old)
    _expire(db)
    new = Fence(NAME, "p2", leases.acquire(NAME, "p2", 30.0).epoch)
    assert (old.epoch, new.epoch) == (1, 2)

    before = rec.segments("b1")
    with pytest.raises(StaleEpoch) as refused:
        rec.record_segment("b1", seg(2), fence=old)
    assert refused.value.current == ("p2", 2) and "epoch 1 refused" in str(refused.value)
    with pytest.raises(StaleEpoch):
        rec.heal_segment("b1", seg(1), fence=old)
    with pytest.raises(StaleEpoch):
        rec.end("b1", datetime.now(UTC), "ended", fence=old)
    with pytest.raises(StaleEpoch):
        rec.finish("b1", datetime.now(UTC), "ended", fence=old)
    assert rec.segments("b1") == before  # nothing written
    info = rec.get("b1")
    assert info.ended_at is None and not info.vod_ready and rec.recorded_state("b1") == {
        ("360p", 0): False, ("360p", 1): True}  # fmt: skip

    # the same epoch under another holder's name is refused too; so is a lease never taken
    with pytest.raises(StaleEpoch):
        rec.record_segment("b1", seg(2), fence=Fence(NAME, "p3", 2))
    with pytest.raises(StaleEpoch) as never:
        rec.record_segment("b1", seg(2), fence=Fence("packager/other", "p1", 1))
    assert never.value.current is None

    # the new holder's writes go through, and so do unfenced ones (a single packager)
    rec.record_segment("b1", seg(2), fence=new)
    assert rec.heal_segment("b1", seg(1), fence=new)
    rec.record_segment("b1", seg(3))
    rec.end("b1", datetime.now(UTC), "ended", fence=new)
    info = rec.finish("b1", datetime.now(UTC), "ended", fence=new)
    assert info.vod_ready and info.healed == 1 and info.gaps == 0
    assert [r.sequence for r in rec.segments("b1")] == [0, 1, 2, 3]


def test_a_takeover_waits_for_a_fenced_write_in_flight(db: Database, db_url: str) -> None:
    """The old holder's write has passed its fence check and is not committed yet when
    the lease has expired and a stand-by asks for it: the takeover waits, the write
    lands, then the new epoch exists and the old holder's next write is refused."""
    rec, leases = Recordings(db), Leases(db)
    rec.start(1, "b1", datetime.now(UTC), "t", True)
    old = Fence(NAME, "p1", leases.acquire(NAME, "p1", 30.0).epoch)
    _expire(db)  # stalled past the lease, not yet taken over

    other = Database(db_url)  # another process (started before: its start-up writes too)
    paused = PausedWrite(db, rec, old, hold=10)
    try:
        took: list[Grant] = []
        taker = threading.Thread(
            target=lambda: took.append(Leases(other).acquire(NAME, "p2", 30.0))
        )
        t0 = time.monotonic()
        taker.start()
        taker.join(0.7)
        assert taker.is_alive() and not took, "the takeover did not wait for the write in flight"
        paused.finish()
        taker.join(10)
        waited = time.monotonic() - t0
        assert paused.errors == [] and took and took[0].granted and took[0].epoch == 2
        assert waited >= 0.7
        assert [r.sequence for r in Recordings(other).segments("b1")] == [0]  # the write landed
        with pytest.raises(StaleEpoch):
            rec.record_segment("b1", seg(1), fence=old)
    finally:
        paused.finish()
        other.close()


def test_a_holder_stalled_inside_a_fenced_write_does_not_block_a_takeover(
    db: Database, db_url: str
) -> None:
    """The old holder passed its fence check and then stalls (a paused process) with the
    lease row share-locked. The stand-by's takeover waits for a row lock only so long
    (a transient error, retried), and the server ends the stalled session after
    ``IDLE_IN_TRANSACTION``: the takeover succeeds, the stalled write writes nothing, and
    the old holder, once going again, gets a transient error and then a refusal."""
    if not db_url.startswith("postgresql"):
        pytest.skip("server-side session limits are PostgreSQL's (SQLite: one node, no stand-by)")
    rec, leases = Recordings(db), Leases(db)
    rec.start(1, "b1", datetime.now(UTC), "t", True)
    old = Fence(NAME, "p1", leases.acquire(NAME, "p1", 30.0).epoch)
    _expire(db)

    other = Database(db_url)
    paused = PausedWrite(db, rec, old, hold=30)
    try:
        t0 = time.monotonic()
        errors: list[BaseException] = []
        grant: Grant | None = None
        while grant is None and time.monotonic() - t0 < transient.IDLE_IN_TRANSACTION + 10:
            try:
                grant = Leases(other).acquire(NAME, "p2", 30.0)
            except Exception as exc:  # noqa: BLE001 - each one must be transient
                assert transient.is_transient(exc), f"not transient: {exc!r}"
                errors.append(exc)
        took = time.monotonic() - t0
        assert grant is not None and grant.granted and grant.epoch == 2, grant
        # it waited for the stalled session's end (not for the stalled process), and a
        # row lock it could not get in time came back as a transient error meanwhile
        assert transient.IDLE_IN_TRANSACTION - 0.5 <= took <= transient.IDLE_IN_TRANSACTION + 5
        assert any(
            getattr(getattr(e, "orig", None), "sqlstate", None) == "55P03" for e in errors
        ), errors
    finally:
        paused.finish()
    try:
        assert len(paused.errors) == 1 and transient.is_transient(paused.errors[0]), paused.errors
        assert Recordings(other).segments("b1") == []  # the stalled write wrote nothing
        with pytest.raises(StaleEpoch):
            rec.record_segment("b1", seg(0), fence=old)  # its retry is refused
    finally:
        other.close()
