"""A failing record call never freezes a rendition: with the database stopped, segments
are listed live all the same and recorded once it is back (retried, in order); a row the
database refuses for good is given up on, and the VOD lists that segment as a gap.
Real PostgreSQL (an instance of the test's own, stopped and started), real store, real
in-process bus."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import m3u8
import pytest
from tests.services import PrivatePostgres, private_postgres

from tidecast.bus.memory import MemoryBus
from tidecast.db.recordings import Recordings
from tidecast.db.repo import Database
from tidecast.messages import BroadcastEnded, BroadcastFinished, BroadcastStarted, SegmentReady
from tidecast.packager.service import Packager
from tidecast.recorder.service import Recorder
from tidecast.retry import Backoff
from tidecast.store.local import LocalStore

B = "20261202T000000Z-dddddd"


@pytest.fixture
def private_pg(tmp_path: Path) -> Iterator[PrivatePostgres]:
    with private_postgres(tmp_path / "pg") as pg:
        yield pg


def seg(n: int, t0: float, **kw: object) -> SegmentReady:
    base = SegmentReady(
        stream="s", broadcast=B, rendition="source", sequence=n, start=10.0 + 2 * n, duration=2.0,
        init_key=f"hls/s/{B}/source/init-p0g0.mp4", segment_key=f"hls/s/{B}/source/{n:06d}.m4s",
        size=1000, codecs="avc1.64001f,mp4a.40.2", width=640, height=360, frame_rate=30.0,
        first_frame_arrival=t0 + 2 * n, renditions=("source",),
    )  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


async def listed(store: LocalStore, n: int, timeout: float) -> m3u8.M3U8:
    path = store.root / "hls/s/source.m3u8"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len((pl := m3u8.loads(path.read_text())).segments) >= n:
            return pl
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {n} segments listed within {timeout} s")


async def eventually(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_records_ride_out_a_database_outage_and_a_bad_row_becomes_a_gap(
    private_pg: PrivatePostgres, tmp_path: Path
) -> None:
    db = Database(private_pg.create_database())
    stream_id = db.create_stream("s", "").stream.id
    recordings = Recordings(db)
    store = LocalStore(tmp_path / "media")
    bus = MemoryBus()
    p = Packager(store, bus, window=100, target_duration=2.0, recorder=Recorder(store, recordings, deadline=0.5),
                 transient=lambda exc: True)  # fmt: skip
    assert p.recording is not None
    p.recording.backoff = Backoff(initial=0.1, maximum=0.5)
    p.recording.give_up_after = 3
    p.recording.transient = lambda exc: "StringDataRightTruncation" not in repr(exc)  # a real "never"
    await p.start()
    t0 = time.time()
    recordings.start(stream_id, B, datetime.fromtimestamp(t0, UTC), "t", True)
    await bus.publish("broadcast.s", BroadcastStarted("s", B, t0))
    for n in range(2):
        await bus.publish("segment.s", seg(n, t0))
    await listed(store, 2, 5)

    private_pg.stop()  # the database goes away mid-broadcast
    t_down = time.monotonic()
    for n in range(2, 5):
        await bus.publish("segment.s", seg(n, t0))
    await listed(store, 5, 8)  # the rendition did not freeze
    assert time.monotonic() - t_down < 8
    assert p.recording.failing and p.recording.pending("s") >= 3
    private_pg.start()
    await eventually(lambda: not p.recording.pending("s"), 30, "the rows to be recorded")  # type: ignore[union-attr]
    assert [r.sequence for r in recordings.segments(B)] == list(range(5))
    assert p.recording.stats.retries >= 1

    # a row the database can never take (a field too long for its column) is given up on
    await bus.publish("segment.s", seg(5, t0, codecs="avc1." + "x" * 200))
    await bus.publish("segment.s", seg(6, t0))
    await listed(store, 7, 10)
    await bus.publish("broadcast.s", BroadcastEnded("s", B, time.time(), "unpublished", 7))
    recordings.end(B, datetime.now(UTC), "unpublished")
    await bus.publish("broadcast.s", BroadcastFinished("s", B, time.time(), "unpublished"))
    await eventually(lambda: recordings.get(B).vod_ready, 30, "the VOD")
    assert p.recording.stats.failed == 1
    vod = (store.root / f"hls/s/{B}/source.m3u8").read_text()
    pl = m3u8.loads(vod)
    assert pl.is_endlist and len(pl.segments) == 7
    assert [i for i, s in enumerate(pl.segments) if "#EXT-X-GAP" in s.dumps(None)] == [5]
    live = m3u8.loads((store.root / "hls/s/source.m3u8").read_text())
    assert live.is_endlist and len(live.segments) == 7 and "#EXT-X-GAP" not in live.dumps()
    await p.aclose()
    db.close()


def test_vod_fills_sequences_no_rendition_recorded() -> None:
    """Unit: rows 0, 1 and 4 recorded (2 and 3 lost in every rendition): the VOD lists 0-4,
    2 and 3 as gaps timed between their neighbours, and the timeline adds up."""
    from tidecast.db.recordings import SegmentRow
    from tidecast.packager.vod import vod_playlists

    def row(n: int) -> SegmentRow:
        return SegmentRow("720p", n, 0, 10.0 + 2 * n, 2.0, f"hls/s/{B}/720p/init-a.mp4",
                          f"hls/s/{B}/720p/{n:06d}.m4s", 1000, False, "avc1.64001f", 1280, 720, 30.0,
                          1_700_000_000.0 + 2 * n)  # fmt: skip

    out = vod_playlists([row(0), row(1), row(4)], f"hls/s/{B}")
    pl = m3u8.loads(out[f"hls/s/{B}/720p.m3u8"].decode())
    assert [s.uri for s in pl.segments] == [f"720p/{n:06d}.m4s" for n in range(5)]
    assert [("#EXT-X-GAP" in s.dumps(None)) for s in pl.segments] == [False, False, True, True, False]
    assert [s.duration for s in pl.segments] == [2.0] * 5
