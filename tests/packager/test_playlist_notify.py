"""After each live media playlist write the packager publishes ``PlaylistUpdated`` (what it
wrote: last segment, last part, ended) on ``playlist.<stream>``; a publish that fails is
counted and never holds up the writes. Real packager, local store, in-process bus (and a
NATS client whose server is not there)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.llhls import ll_playlist

from tidecast.bus.memory import MemoryBus
from tidecast.bus.nats import NatsBus
from tidecast.messages import BroadcastStarted, PlaylistUpdated, SegmentReady
from tidecast.metrics import REGISTRY
from tidecast.packager.service import Packager
from tidecast.store.local import LocalStore

B = "20261202T000000Z-eeeeee"


def seg(n: int) -> SegmentReady:
    return SegmentReady(
        stream="s", broadcast=B, rendition="source", sequence=n, start=2.0 * n, duration=2.0,
        init_key=f"hls/s/{B}/source/init-p0g0.mp4", segment_key=f"hls/s/{B}/source/{n:06d}.m4s",
        size=1000, codecs="avc1.64001f,mp4a.40.2", width=640, height=360, frame_rate=30.0,
        renditions=("source",),
    )  # fmt: skip


async def test_each_live_playlist_write_is_announced(tmp_path: Path) -> None:
    store, bus = LocalStore(tmp_path), MemoryBus()
    notices = bus.subscribe("playlist.>")
    p = Packager(store, bus, window=10, target_duration=2.0)
    await p.start()
    try:
        await bus.publish("broadcast.s", BroadcastStarted("s", B, time.time()))
        for n in range(3):
            await bus.publish("segment.s", seg(n))
        got: list[PlaylistUpdated] = []
        deadline = time.monotonic() + 10
        while not (got and got[-1].msn == 2) and time.monotonic() < deadline:
            d = await notices.next(timeout=1.0)
            if d is not None:
                assert d.subject == "playlist.s" and isinstance(d.message, PlaylistUpdated)
                got.append(d.message)
        assert got and got[-1].msn == 2, got
        assert {(m.stream, m.rendition, m.part, m.ended) for m in got} == {("s", "source", -1, False)}
        assert [m.msn for m in got] == sorted(m.msn for m in got)  # in write order
        stored = (tmp_path / "hls/s/source.m3u8").read_text()
        assert stored.count("#EXTINF:") == 3  # what the last notice said is what is stored
    finally:
        await p.aclose()


async def test_a_notice_reads_parts_from_what_was_written(tmp_path: Path) -> None:
    store, bus = LocalStore(tmp_path), MemoryBus()
    notices = bus.subscribe("playlist.>")
    p = Packager(store, bus, window=10, target_duration=2.0)
    p.sync.want("s", "hls/s/720p.m3u8", ll_playlist(5, 2).encode(), 0)
    d = await notices.next(timeout=5)
    assert d is not None and isinstance(d.message, PlaylistUpdated)
    assert (d.message.rendition, d.message.msn, d.message.part, d.message.ended) == ("720p", 4, 1, False)
    p.sync.want("s", "hls/s/720p.m3u8", ll_playlist(5, ended=True).encode(), 0)
    d = await notices.next(timeout=5)
    assert d is not None and isinstance(d.message, PlaylistUpdated) and d.message.ended
    # neither a multivariant playlist nor a VOD playlist is announced
    p.sync.want("s", "hls/s/master.m3u8", b"#EXTM3U\n", 0)
    p.sync.want("s", f"hls/s/{B}/720p.m3u8", ll_playlist(5, ended=True).encode(), 0)
    assert await p.sync.flush(5) and (tmp_path / "hls/s/master.m3u8").exists()
    assert await notices.next(timeout=0.3) is None
    await p.aclose()


async def test_a_failed_notice_is_counted_and_the_writes_go_on(tmp_path: Path) -> None:
    failures = REGISTRY.counter("tidecast_packager_playlist_notify_failures_total", "", ("stream",))
    before = failures.value(stream="f")
    store = LocalStore(tmp_path)
    bus = NatsBus("nats://127.0.0.1:9", prefix="nowhere")  # never connected: every publish fails
    p = Packager(store, bus, window=10, target_duration=2.0)
    for n in range(1, 4):
        p.sync.want("f", "hls/f/720p.m3u8", ll_playlist(n).encode(), 0)
        assert await p.sync.flush(5)
    assert (tmp_path / "hls/f/720p.m3u8").read_text() == ll_playlist(3)
    deadline = time.monotonic() + 5
    while failures.value(stream="f") < before + 3 and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    assert failures.value(stream="f") == before + 3
    assert p.sync.stats.writes == 3 and p.sync.stats.retries == 0
    await p.aclose()
