"""Two packagers, one stream: exactly one writes its playlists; when the leader dies
(no clean release: its lease just stops being renewed), the other takes over within
the lease time and continues the sequence from the bus's log — no gap, no duplicate,
never behind what was already published. Real SQLite leases, real in-process bus."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import m3u8
import pytest

from tidecast.bus.memory import MemoryBus
from tidecast.db.leases import Leases
from tidecast.db.recordings import Recordings
from tidecast.db.repo import Database
from tidecast.messages import BroadcastEnded, BroadcastFinished, BroadcastStarted, SegmentReady
from tidecast.packager.leader import StreamLeadership
from tidecast.packager.service import Packager
from tidecast.recorder.service import Recorder
from tidecast.store.local import LocalStore

TTL = 0.6


def seg(bid: str, n: int, t0: float) -> SegmentReady:
    return SegmentReady(
        stream="s", broadcast=bid, rendition="source", sequence=n, start=10.0 + 2 * n, duration=2.0,
        init_key=f"hls/s/{bid}/source/init-p0g0.mp4", segment_key=f"hls/s/{bid}/source/{n:06d}.m4s",
        size=1000, codecs="avc1.64001f,mp4a.40.2", width=640, height=360, frame_rate=30.0,
        first_frame_arrival=t0 + 2 * n, renditions=("source",),
    )  # fmt: skip


async def crash(p: Packager) -> None:
    """Stop a packager the way SIGKILL does: no drain, no lease release."""
    assert p.leadership is not None and p.leadership._sup is not None
    for sub in p._subs:
        await sub.aclose()
    await p.leadership._sup.aclose()
    await p.sup.aclose()


async def playlist(store: LocalStore) -> m3u8.M3U8 | None:
    path = store.root / "hls/s/source.m3u8"
    return m3u8.loads(path.read_text()) if path.exists() else None


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Database, LocalStore]:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    db.create_stream("s", "")
    store = LocalStore(tmp_path / "media")
    return db, store


def packager(db: Database, store: LocalStore, bus: MemoryBus) -> Packager:
    recordings = Recordings(db)
    return Packager(store, bus, window=100, target_duration=2.0, recorder=Recorder(store, recordings),
                    leadership=StreamLeadership(Leases(db), TTL), takeover=recordings)  # fmt: skip


async def wait_listed(store: LocalStore, n: int, timeout: float = 5.0) -> m3u8.M3U8:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pl = await playlist(store)
        if pl is not None and len(pl.segments) >= n:
            return pl
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {n} segments listed: {await playlist(store)}")


async def test_one_leader_then_takeover_without_gaps(setup: tuple[Database, LocalStore]) -> None:
    db, store = setup
    bus = MemoryBus()
    a, b = packager(db, store, bus), packager(db, store, bus)
    await a.start()
    await b.start()
    recordings = Recordings(db)
    t0 = time.time()
    bid = "20261125T000000Z-abcdef"
    stream_id = db.list_streams()[0].id
    recordings.start(stream_id, bid, datetime.fromtimestamp(t0, UTC), "t", True)
    await bus.publish("broadcast.s", BroadcastStarted("s", bid, t0))
    for n in range(5):
        await bus.publish("segment.s", seg(bid, n, t0))
    pl = await wait_listed(store, 5)
    leaders = [p for p in (a, b) if p.leadership and p.leadership.leads("s")]
    assert len(leaders) == 1, "exactly one packager leads the stream"
    leader, other = leaders[0], (b if leaders[0] is a else a)
    assert "s" not in other.core.streams  # the stand-by keeps no state and writes nothing

    # the leader dies; segments keep coming, one of them out of order
    await crash(leader)
    seen = [(pl.media_sequence, len(pl.segments))]
    for n in (5, 7, 6, 8, 9):
        await bus.publish("segment.s", seg(bid, n, t0))
        await asyncio.sleep(0.1)
        cur = await playlist(store)
        assert cur is not None
        seen.append((cur.media_sequence, len(cur.segments)))
    pl = await wait_listed(store, 10, timeout=TTL * 6)
    assert other.leadership is not None and other.leadership.leads("s")
    assert [s.uri for s in pl.segments] == [f"{bid}/source/{n:06d}.m4s" for n in range(10)]
    assert pl.media_sequence == 0
    assert all(x[1] <= y[1] for x, y in zip(seen, seen[1:], strict=False)), f"went backwards: {seen}"
    # recorded once each (the new leader did not record the old leader's segments again)
    assert [r.sequence for r in recordings.segments(bid)] == list(range(10))

    # the end of the broadcast is handled by the new leader
    await bus.publish("broadcast.s", BroadcastEnded("s", bid, time.time(), "unpublished", 10))
    recordings.end(bid, datetime.now(UTC), "unpublished")
    await bus.publish("broadcast.s", BroadcastFinished("s", bid, time.time(), "unpublished"))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not (await playlist(store) or m3u8.M3U8()).is_endlist:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    final = await playlist(store)
    assert final is not None and final.is_endlist and len(final.segments) == 10
    assert recordings.get(bid).vod_ready
    await other.aclose()


async def test_a_takeover_continues_sequence_numbers_of_an_earlier_broadcast(
    setup: tuple[Database, LocalStore],
) -> None:
    """The media sequence continues across broadcasts; a new leader reads where it
    stands from the stored playlist, not from its own (empty) memory."""
    db, store = setup
    bus = MemoryBus()
    a = packager(db, store, bus)
    await a.start()
    recordings = Recordings(db)
    stream_id = db.list_streams()[0].id
    t0 = time.time()
    first, second = "20261125T000000Z-aaaaaa", "20261125T000100Z-bbbbbb"
    recordings.start(stream_id, first, datetime.fromtimestamp(t0, UTC), "1", True)
    await bus.publish("broadcast.s", BroadcastStarted("s", first, t0))
    for n in range(3):
        await bus.publish("segment.s", seg(first, n, t0))
    await wait_listed(store, 3)
    await bus.publish("broadcast.s", BroadcastEnded("s", first, time.time(), "unpublished", 3))
    recordings.end(first, datetime.now(UTC), "unpublished")
    await bus.publish("broadcast.s", BroadcastFinished("s", first, time.time(), "unpublished"))
    await asyncio.sleep(0.2)
    t1 = time.time() + 0.01
    recordings.start(stream_id, second, datetime.fromtimestamp(t1, UTC), "2", True)
    await bus.publish("broadcast.s", BroadcastStarted("s", second, t1))
    await bus.publish("segment.s", seg(second, 0, t1))
    pl = await wait_listed(store, 4)
    assert pl.segments[3].uri == f"{second}/source/000000.m4s"
    await crash(a)
    b = packager(db, store, bus)  # a fresh process: knows nothing
    await b.start()
    await bus.publish("segment.s", seg(second, 1, t1))
    pl = await wait_listed(store, 5, timeout=TTL * 6)
    msn = {s.uri: pl.media_sequence + i for i, s in enumerate(pl.segments)}
    assert msn[f"{second}/source/000000.m4s"] == 3 and msn[f"{second}/source/000001.m4s"] == 4
    await b.aclose()


async def test_the_end_of_a_broadcast_its_dead_leader_never_handled(setup: tuple[Database, LocalStore]) -> None:
    """The leader dies just before the last messages: the stand-by takes over when the
    lease expires (no new message needed), ends the playlists and writes the VOD."""
    db, store = setup
    bus = MemoryBus()
    a, b = packager(db, store, bus), packager(db, store, bus)
    await a.start()
    await b.start()
    recordings = Recordings(db)
    t0 = time.time()
    bid = "20261125T000200Z-cccccc"
    recordings.start(db.list_streams()[0].id, bid, datetime.fromtimestamp(t0, UTC), "t", True)
    await bus.publish("broadcast.s", BroadcastStarted("s", bid, t0))
    for n in range(3):
        await bus.publish("segment.s", seg(bid, n, t0))
    await wait_listed(store, 3)
    leader = a if a.leadership and a.leadership.leads("s") else b
    other = b if leader is a else a
    await crash(leader)
    await bus.publish("broadcast.s", BroadcastEnded("s", bid, time.time(), "unpublished", 3))
    recordings.end(bid, datetime.now(UTC), "unpublished")
    await bus.publish("broadcast.s", BroadcastFinished("s", bid, time.time(), "unpublished"))
    deadline = time.monotonic() + TTL * 8
    while time.monotonic() < deadline and not (await playlist(store) or m3u8.M3U8()).is_endlist:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    final = await playlist(store)
    assert final is not None and final.is_endlist and len(final.segments) == 3
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and recordings.needs_vod(bid):  # written right after the playlists  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert not recordings.needs_vod(bid) and recordings.get(bid).vod_ready
    await other.aclose()


async def test_a_stand_by_that_saw_nothing_takes_over_a_live_stream(setup: tuple[Database, LocalStore]) -> None:
    """A packager started after the leader died (or whose subscription saw nothing of the
    stream) learns of the live broadcast from the database, not only from the bus: it
    takes the stream over once the lease expires, with no message needed."""
    db, store = setup
    bus = MemoryBus()
    a = packager(db, store, bus)
    await a.start()
    recordings = Recordings(db)
    t0 = time.time()
    bid = "20261125T000300Z-eeeeee"
    recordings.start(db.list_streams()[0].id, bid, datetime.fromtimestamp(t0, UTC), "t", True)
    await bus.publish("broadcast.s", BroadcastStarted("s", bid, t0))
    for n in range(3):
        await bus.publish("segment.s", seg(bid, n, t0))
    await wait_listed(store, 3)
    await crash(a)
    b = packager(db, store, bus)  # a fresh process: it has seen no message of "s"
    await b.start()
    deadline = time.monotonic() + TTL * 8
    while time.monotonic() < deadline and not (b.leadership and b.leadership.leads("s")):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert b.leadership is not None and b.leadership.leads("s")
    assert "s" in b.core.streams  # rebuilt from the bus's log
    await bus.publish("segment.s", seg(bid, 3, t0))
    pl = await wait_listed(store, 4)
    assert [s.uri for s in pl.segments] == [f"{bid}/source/{n:06d}.m4s" for n in range(4)]
    await b.aclose()
