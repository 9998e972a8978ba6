"""SegmenterService on a real local store and the in-process bus.

Slow and failing stores are real ``LocalStore``s: one whose writes under a
prefix are held until the test lets them go, and one where a segment's path
cannot be written (a directory stands where the file must go).
"""

from __future__ import annotations

import ast
import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import m3u8
import pytest
from tests.segmenter.test_core import A, V

from tidecast import keys
from tidecast.bus.base import BusFull
from tidecast.bus.memory import MemoryBus
from tidecast.media.frames import MediaFrame, TrackKind
from tidecast.messages import (
    BroadcastEnded,
    BroadcastFinished,
    Message,
    SegmentReady,
    TranscodeJob,
    encode,
)
from tidecast.metrics import REGISTRY, Registry
from tidecast.packager.service import Packager
from tidecast.segmenter.service import BroadcastSegmenter, SegmenterService, StoreStalled
from tidecast.store.local import LocalStore
from tidecast.transcode.ladder import DEFAULT_LADDER, Ladder


class HeldStore(LocalStore):
    """A local store whose writes under ``hold`` wait until ``release`` is set."""

    def __init__(self, root: Path, hold: str) -> None:
        super().__init__(root)
        self.hold = hold
        self.release = asyncio.Event()
        self.held = 0

    async def put(self, key: str, data: bytes) -> None:
        if key.startswith(self.hold) and not self.release.is_set():
            self.held += 1
            await self.release.wait()
        await super().put(key, data)


class RefusingBus(MemoryBus):
    """The in-process bus, refusing (as a full JetStream would) publishes on one root."""

    def __init__(self, refuse: str) -> None:
        super().__init__()
        self.refuse = refuse

    async def publish(self, subject: str, message: Message) -> None:
        if subject.startswith(self.refuse):
            raise BusFull(f"{subject}: stream full")
        await super().publish(subject, message)


def frames(seconds: float, start_ms: int = 0, fps: int = 30, gop: float = 2.0) -> Iterator[MediaFrame]:
    """Video (a keyframe every ``gop``) and AAC, interleaved as ffmpeg's FLV muxer does."""
    events: list[tuple[int, bool, MediaFrame]] = []
    for i in range(round(seconds * fps)):
        ts = start_ms + round(i * 1000 / fps)
        events.append((ts, True, MediaFrame(TrackKind.VIDEO, ts, ts, b"v%d" % i, i % round(gop * fps) == 0)))
    for j in range(int(seconds * 48000 / 1024)):
        ts = start_ms + (j * 1024 * 1000) // 48000
        events.append((ts, False, MediaFrame(TrackKind.AUDIO, ts, ts, b"a%d" % j, True)))
    events.sort(key=lambda e: (e[0], e[1]))
    return (f for _, _, f in events)


def start(sink: BroadcastSegmenter) -> None:
    sink.video_config(V)
    sink.audio_config(A)


async def publish(sink: BroadcastSegmenter, seconds: float) -> None:
    """A whole publish: configs, ``seconds`` of frames, the end."""
    start(sink)
    for f in frames(seconds):
        sink.frame(f)
    await sink.finish()


async def eventually(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait (at most ``timeout``) until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)


async def collect(sub: object, until: int, timeout: float = 5.0) -> list[Message]:
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(out) < until and time.monotonic() < deadline:
        d = await sub.next(timeout=0.1)  # type: ignore[attr-defined]
        if d is not None:
            out.append(d.message)
    return out


async def drain(sub: object) -> list[Message]:
    out: list[Message] = []
    while (d := await sub.next(timeout=0.05)) is not None:  # type: ignore[attr-defined]
        out.append(d.message)
    return out


async def test_a_full_queue_holds_only_its_publisher_until_the_store_catches_up(tmp_path: Path) -> None:
    reg = Registry()
    store = HeldStore(tmp_path, hold="hls/slow/")
    bus = MemoryBus()
    seen = bus.subscribe("segment.>")
    svc = SegmenterService(store, bus, 2.0, queue_segments=3, registry=reg)
    slow, fast = svc.open("slow", "b1", 0.0), svc.open("fast", "b2", 0.0)
    start(slow)
    start(fast)
    for f in frames(10.0):
        slow.frame(f)
    await asyncio.sleep(0.05)
    assert store.held == 1  # the writer is stuck on the first segment
    assert len(slow.queue) == 4 and slow.full()  # 0..3 cut (4 waits for audio / its end)
    assert reg.gauge("tidecast_segmenter_queued_segments", "", ("stream",)).value(stream="slow") == 4
    held = asyncio.create_task(slow.room())
    # another publisher on the same service is not held: its own queue, its own writer
    for f in frames(10.0):
        fast.frame(f)
        await fast.room()
    ready = [m for m in await collect(seen, 4) if isinstance(m, SegmentReady)]
    assert [(m.stream, m.sequence) for m in ready] == [("fast", i) for i in range(4)]
    await asyncio.sleep(0.3)
    assert not held.done(), "room() returned while the queue was still full"
    store.release.set()
    await asyncio.wait_for(held, 5)
    waited = reg.counter("tidecast_ingest_backpressure_seconds_total", "", ("stream",))
    # the fast one only ever waited for its own writer, never for the slow stream's
    assert waited.value(stream="slow") >= 0.3 and waited.value(stream="fast") < 0.1
    assert slow.stats.backpressure_seconds >= 0.3
    await slow.finish()
    await fast.finish()
    rest = await drain(seen)
    slow_ready = sorted(m.sequence for m in rest if isinstance(m, SegmentReady) and m.stream == "slow")
    assert slow_ready == [0, 1, 2, 3, 4]  # nothing lost while held
    for seq in range(5):
        assert (tmp_path / keys.segment("slow", "b1", "source", seq)).is_file()
    await svc.aclose()


async def test_the_byte_bound_holds_too(tmp_path: Path) -> None:
    store = HeldStore(tmp_path, hold="hls/s/")
    svc = SegmenterService(store, MemoryBus(), 2.0, queue_bytes=4000, registry=Registry())
    sink = svc.open("s", "b", 0.0)
    sink.video_config(V)  # video only: a cut segment is queued at once
    big = b"x" * 5000
    sink.frame(MediaFrame(TrackKind.VIDEO, 0, 0, big, True))
    sink.frame(MediaFrame(TrackKind.VIDEO, 2000, 2000, b"k", True))  # cuts one 5 kB segment
    assert len(sink.queue) == 1 and sink.queued_bytes == 5000 and sink.full()
    store.release.set()
    await asyncio.wait_for(sink.room(), 5)
    assert not sink.full() and sink.queued_bytes == 0
    await svc.aclose()


async def test_a_publisher_held_past_the_deadline_is_refused(tmp_path: Path) -> None:
    reg = Registry()
    store = HeldStore(tmp_path, hold="hls/s/")
    svc = SegmenterService(store, MemoryBus(), 2.0, queue_segments=2, backpressure_deadline=0.2,
                           registry=reg)  # fmt: skip
    sink = svc.open("s", "b", 0.0)
    start(sink)
    for f in frames(8.0):
        sink.frame(f)
    t0 = time.monotonic()
    with pytest.raises(StoreStalled) as info:
        await sink.room()
    assert 0.2 <= time.monotonic() - t0 < 1.0
    assert info.value.limit == "backpressure"
    assert info.value.description.startswith("the server could not store this stream for 0.2 s (3 segments waiting)")
    assert "publish again later" in info.value.description
    refused = reg.counter("tidecast_ingest_publishers_refused_total", "", ("stream", "limit"))
    assert refused.value(stream="s", limit="backpressure") == 1
    store.release.set()
    await svc.aclose()


async def test_a_segment_that_cannot_be_stored_becomes_a_gap_in_every_rendition(tmp_path: Path) -> None:
    reg = Registry()
    store = LocalStore(tmp_path)
    # a directory where segment 1 must go: that write fails for good; 0 and 2 are fine
    (tmp_path / keys.segment("s", "b", "source", 1)).mkdir(parents=True)
    bus = MemoryBus()
    seen, jobs = bus.subscribe("segment.s"), bus.subscribe("job.transcode.s")
    svc = SegmenterService(store, bus, 2.0, Ladder(DEFAULT_LADDER), registry=reg)
    sink = svc.open("s", "b", 0.0)
    await publish(sink, 6.1)
    msgs = [m for m in await drain(seen) if isinstance(m, SegmentReady)]
    by_seq: dict[int, dict[str, SegmentReady]] = {}
    for m in msgs:
        by_seq.setdefault(m.sequence, {})[m.rendition] = m
    assert sorted(by_seq) == [0, 1, 2, 3]
    gaps = by_seq[1]
    assert set(gaps) == {"source", "audio", "720p", "480p", "240p"}
    assert all(g.gap and g.size == 0 and g.init_key == "" for g in gaps.values())
    assert gaps["source"].renditions == ("source",)
    for name in ("audio", "720p", "480p", "240p"):
        assert gaps[name].renditions == ("720p", "480p", "240p", "audio"), name
    ok = by_seq[2]["audio"]
    assert ok.renditions == gaps["audio"].renditions and not ok.gap  # the same set as normal
    for g in gaps.values():
        assert abs(g.duration - 2.0) < 0.05 and abs(g.start - (12.0 + 0.0)) < 0.05
        assert g.segment_key == keys.segment("s", "b", g.rendition, 1)
    assert not any(m.gap for seq in (0, 2) for m in by_seq[seq].values())
    job_seqs = [m.sequence for m in await drain(jobs) if isinstance(m, TranscodeJob)]
    assert job_seqs == [0, 2, 3]  # no job for the segment that was not stored
    assert reg.counter("tidecast_segmenter_store_failures_total", "", ("stream",)).value(stream="s") == 1
    assert sink.stats.store_errors == 1 and sink.stats.gaps == 5
    await svc.aclose()


async def test_the_packager_lists_the_gap_at_once_and_goes_on(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    (tmp_path / keys.segment("s", "b", "source", 1)).mkdir(parents=True)
    bus = MemoryBus()
    packager = Packager(store, bus, window=10, target_duration=2.0)
    await packager.start()
    svc = SegmenterService(store, bus, 2.0, registry=Registry())
    sink = svc.open("s", "b", 0.0)
    await publish(sink, 8.1)
    await bus.publish("broadcast.s", BroadcastFinished("s", "b", time.time(), "unpublished"))
    await packager.aclose()
    pl = m3u8.loads((tmp_path / keys.live_playlist("s", "source")).read_text())
    assert len(pl.segments) == 5
    assert [s.uri.endswith(f"{i:06d}.m4s") for i, s in enumerate(pl.segments)] == [True] * 5
    text = (tmp_path / keys.live_playlist("s", "source")).read_text()
    assert text.count("#EXT-X-GAP") == 1 and "#EXT-X-ENDLIST" in text
    assert text.index("#EXT-X-GAP") < text.index("000001.m4s") < text.index("000002.m4s")


async def test_a_job_the_bus_refuses_becomes_gaps_and_no_lag(tmp_path: Path) -> None:
    reg = Registry()
    bus = RefusingBus("job.")
    seen = bus.subscribe("segment.s")
    svc = SegmenterService(LocalStore(tmp_path), bus, 2.0, Ladder(DEFAULT_LADDER), registry=reg)
    sink = svc.open("s", "b", 0.0)
    await publish(sink, 4.1)
    msgs = [m for m in await drain(seen) if isinstance(m, SegmentReady)]
    seq0 = {m.rendition: m.gap for m in msgs if m.sequence == 0}
    assert seq0 == {"source": False, "audio": False, "720p": True, "480p": True, "240p": True}
    assert sink.pressure.outstanding() == 0  # a job nobody got is not a transcode lag
    assert reg.counter("tidecast_segmenter_publish_failures_total", "", ("stream",)).value(stream="s") == 3
    await svc.aclose()


async def test_the_lag_tracker_survives_a_bad_message(tmp_path: Path) -> None:
    reg = Registry()
    bus = MemoryBus()
    svc = SegmenterService(LocalStore(tmp_path), bus, 2.0, Ladder(DEFAULT_LADDER), registry=reg)
    sink = svc.open("s", "b", 0.0)
    sink.pressure.plan(7, ("720p",), time.monotonic())
    ok = SegmentReady("s", "b", "720p", 7, 0.0, 2.0, "i", "k", 1)
    poison = REGISTRY.counter("tidecast_bus_poison_messages_total", "", ("subject",))
    before = poison.value(subject="segment")
    await bus.publish_raw("segment.s", b"{not json")
    await bus.publish_raw("segment.s", encode(ok).replace(b'"size":1', b'"size":"big"'))
    await bus.publish("segment.s", ok)
    await eventually(lambda: not sink.pressure.outstanding())
    assert sink.pressure.outstanding() == 0  # the good message after the bad ones was taken
    assert poison.value(subject="segment") - before == 2  # the bus screened them out
    assert svc.supervisor.running(sink._tracker_name)
    assert svc.supervisor.crash_count == 0
    await sink.finish()
    assert not svc.supervisor.running(sink._tracker_name)
    await svc.aclose()


async def test_finish_waits_for_the_store_at_most_its_timeout_then_announces_gaps(tmp_path: Path) -> None:
    store = HeldStore(tmp_path, hold="hls/s/")  # never released
    bus = MemoryBus()
    seen, ends = bus.subscribe("segment.s"), bus.subscribe("broadcast.s")
    svc = SegmenterService(store, bus, 2.0, finish_timeout=0.3, registry=Registry())
    sink = svc.open("s", "b", 0.0)
    start(sink)
    for f in frames(6.1):
        sink.frame(f)
    t0 = time.monotonic()
    await sink.finish()
    assert time.monotonic() - t0 < 2.0
    gaps = [m for m in await drain(seen) if isinstance(m, SegmentReady)]
    assert sorted(m.sequence for m in gaps) == [0, 1, 2, 3] and all(m.gap for m in gaps)
    ended = [m for m in await drain(ends) if isinstance(m, BroadcastEnded)]
    assert len(ended) == 1 and ended[0].segments == 4
    assert "b" not in svc.active
    store.release.set()
    await svc.aclose()


async def test_a_segment_limit_is_counted_and_raised_to_ingest(tmp_path: Path) -> None:
    reg = Registry()
    bus = MemoryBus()
    seen = bus.subscribe("segment.s")
    svc = SegmenterService(LocalStore(tmp_path), bus, 2.0, max_segment_duration=5.0, registry=reg)
    sink = svc.open("s", "b", 0.0)
    start(sink)
    for f in frames(4.1):
        sink.frame(f)
    with pytest.raises(Exception) as info:  # noqa: PT011 - its type is checked below
        for i in range(300):
            sink.frame(MediaFrame(TrackKind.VIDEO, 4100 + 33 * i, 4100 + 33 * i, b"p", False))
    assert type(info.value).__name__ == "SegmentLimitError"
    assert "no keyframe for 5.0 s" in str(info.value)
    await sink.finish("rejected")
    ready = sorted(m.sequence for m in await drain(seen) if isinstance(m, SegmentReady))
    assert ready == [0, 1]  # kept; the over-long segment from 4.0 s is not
    refused = reg.counter("tidecast_ingest_publishers_refused_total", "", ("stream", "limit"))
    assert refused.value(stream="s", limit="duration") == 1
    await svc.aclose()


def test_the_plan_must_be_a_transcode_plan(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="TranscodePlan"):
        SegmenterService(LocalStore(tmp_path), MemoryBus(), 2.0, DEFAULT_LADDER)  # type: ignore[arg-type]
    assert SegmenterService(LocalStore(tmp_path), MemoryBus(), 2.0, Ladder()).plan == Ladder()


def test_the_segmenter_does_not_import_transcode() -> None:
    root = Path(__file__).parents[2] / "src/tidecast/segmenter"
    imported: set[str] = set()
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
    assert "tidecast.segmenter.plan" in imported  # the scan sees the package's imports
    assert not [m for m in imported if m.startswith("tidecast.transcode")]


async def test_a_source_at_its_top_rung_height_is_listed_in_its_place(tmp_path: Path) -> None:
    """Passthrough: a 720p source with the default ladder is not encoded at 720p again.
    Its jobs carry the lower rungs only; every message names the source among the
    renditions, the source's own SegmentReady too (the packager lists it by that), and
    a segment that cannot be stored is a gap in the source with the same names."""
    store = LocalStore(tmp_path)
    (tmp_path / keys.segment("s", "b", "source", 1)).mkdir(parents=True)
    bus = MemoryBus()
    seen, jobs = bus.subscribe("segment.s"), bus.subscribe("job.transcode.s")
    svc = SegmenterService(store, bus, 2.0, Ladder(DEFAULT_LADDER, passthrough=True), registry=Registry())
    sink = svc.open("s", "b", 0.0)
    await publish(sink, 6.1)
    made = ("source", "480p", "240p", "audio")
    msgs = [m for m in await drain(seen) if isinstance(m, SegmentReady)]
    assert {m.rendition for m in msgs if not m.gap} == {"source", "audio"}  # no worker here
    assert all(m.renditions == made for m in msgs), {(m.rendition, m.sequence, m.renditions) for m in msgs}
    assert [m.sequence for m in msgs if m.gap] == [1, 1, 1, 1]  # source, audio, 480p, 240p
    job_list = [m for m in await drain(jobs) if isinstance(m, TranscodeJob)]
    assert [j.sequence for j in job_list] == [0, 2, 3]
    assert all([r["name"] for r in j.rungs] == ["480p", "240p"] and j.renditions == made for j in job_list)
    await svc.aclose()
