"""Streaming transcode (LL-HLS) with the real segmenter, real worker processes and real
ffmpeg: the job starts at a segment's first frame, every rung's parts come out while
the segment is still being cut, aligned with the source parts, and the whole segment
is the same media; a worker SIGKILLed mid-segment is resumed at the next part."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import pytest
from tests.transcode.conftest import collect

from tidecast import keys
from tidecast.bus.memory import MemoryBus
from tidecast.media import fmp4
from tidecast.media.aac import parse_asc
from tidecast.media.frames import AudioConfig, MediaFrame, TrackKind, VideoConfig
from tidecast.media.h264 import parse_avcc
from tidecast.messages import Message, PartReady, SegmentReady, TranscodeJob, WorkerPart
from tidecast.segmenter.service import SegmenterService
from tidecast.store.local import LocalStore
from tidecast.transcode.coordinator import TranscodeCoordinator
from tidecast.transcode.job import JobError
from tidecast.transcode.ladder import Ladder, parse_ladder
from tidecast.transcode.stream import Wakeups, run_stream_job

LADDER = parse_ladder("180:300,120:150")
RUNGS = ("180p", "120p")
STREAM = "ll"


@dataclass(frozen=True)
class Source:
    video: VideoConfig
    audio: AudioConfig
    frames: list[MediaFrame]  # in the order an RTMP publisher sends them


def make_source(tmp: Path, exe: str, seconds: float, gop: int) -> Source:
    """A 320x180 30 fps H.264 + AAC source (x264 zerolatency, as a live encoder sends it)."""
    path = tmp / "src.flv"
    subprocess.run(
        [exe, "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size=320x180:rate=30:duration={seconds}",
         "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
         "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
         "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
         "-c:a", "aac", "-b:a", "64k", str(path)],
        check=True, timeout=60,
    )  # fmt: skip
    frames = []
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        video = parse_avcc(bytes(v.codec_context.extradata or b""))
        audio = parse_asc(bytes(a.codec_context.extradata or b""))
        for p in c.demux(v, a):
            if p.size == 0 or p.dts is None or p.pts is None or p.time_base is None:
                continue
            tb = Fraction(p.time_base)
            kind = TrackKind.VIDEO if p.stream.type == "video" else TrackKind.AUDIO
            frames.append(MediaFrame(kind, round(p.dts * tb * 1000), round(p.pts * tb * 1000), bytes(p),
                                     p.is_keyframe))  # fmt: skip
    return Source(video, audio, frames)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, ffmpeg_exe: str) -> Source:
    return make_source(tmp_path_factory.mktemp("ll"), ffmpeg_exe, 4.0, 60)


async def publish(svc: SegmenterService, src: Source, broadcast: str, realtime: bool = True) -> None:
    """Feed the segmenter as ingest does, at the pace of the media (a live publisher)."""
    sink = svc.open(STREAM, broadcast, time.time())
    sink.video_config(src.video)
    sink.audio_config(src.audio)
    t0 = time.monotonic()
    for f in src.frames:
        if realtime:
            await asyncio.sleep(max(0.0, t0 + f.dts / 1000 - time.monotonic()))
        sink.frame(MediaFrame(f.kind, f.dts, f.pts, f.data, f.keyframe, time.time()))
        await sink.room()
    await sink.finish()


def decode(data: bytes) -> list[tuple[int, bool]]:
    """(pts in 90 kHz ticks, keyframe) of every picture an fMP4 byte string decodes to."""
    out = []
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        for frame in c.decode(stream):
            assert frame.pts is not None and frame.time_base is not None
            out.append((round(frame.pts * Fraction(frame.time_base) * 90000), frame.key_frame))
    return out


def parts_of(msgs: list[Message], rendition: str, sequence: int) -> dict[int, PartReady]:
    """The last announcement of each part (a resumed job announces the last stored again)."""
    return {m.index: m for m in msgs
            if isinstance(m, PartReady) and m.rendition == rendition and m.sequence == sequence}  # fmt: skip


def source_pts(src: Source, start: int, end: int) -> list[int]:
    """Source pictures' presentation times (ticks) in [start, end) on the segmenter's timeline."""
    ticks = sorted(f.pts * 90 + 10 * 90000 for f in src.frames if f.kind is TrackKind.VIDEO)
    return [t for t in ticks if start <= t < end]


async def test_parts_come_while_the_segment_is_cut_aligned_and_whole(
    tmp_path: Path, source: Source
) -> None:
    store = LocalStore(tmp_path / "store")
    bus = MemoryBus()
    everything = bus.subscribe(">")
    svc = SegmenterService(store, bus, 2.0, Ladder(LADDER), "ultrafast", part_target=0.25)
    tc = TranscodeCoordinator(bus, store.root.as_uri(), workers=2, heal=False)
    await tc.start()
    try:
        await publish(svc, source, "b1")
        msgs = await collect(everything, lambda m: sum(
            isinstance(x, SegmentReady) and x.rendition in RUNGS for x in m) == 4, timeout=60)  # fmt: skip
    finally:
        await tc.aclose()
        await svc.aclose()
        await bus.aclose()
    seg_ready = {(m.rendition, m.sequence): m for m in msgs if isinstance(m, SegmentReady)}
    for seq in (0, 1):
        job_at = next(i for i, m in enumerate(msgs) if isinstance(m, TranscodeJob) and m.sequence == seq)
        source_done = msgs.index(seg_ready[("source", seq)])
        src_parts = parts_of(msgs, "source", seq)
        assert sorted(src_parts) == list(range(8))
        for rung in RUNGS:
            parts = parts_of(msgs, rung, seq)
            # the job went out before the first source part, and the rung's first parts were
            # announced before the source segment was complete
            assert job_at < msgs.index(src_parts[0]) < msgs.index(parts[0]) < source_done
            assert msgs.index(parts[2]) < source_done
            # aligned with the source parts: same indices, same starts and durations
            assert sorted(parts) == sorted(src_parts)
            for i, p in parts.items():
                assert p.start == pytest.approx(src_parts[i].start, abs=1e-9)
                assert p.duration == pytest.approx(src_parts[i].duration, abs=1e-9)
                assert p.independent == (i == 0) and p.final == (i == 7)
                assert p.key == keys.part(STREAM, "b1", rung, seq, i)
            whole = seg_ready[(rung, seq)]
            assert all(msgs.index(p) < msgs.index(whole) for p in parts.values())
            assert whole.duration == pytest.approx(seg_ready[("source", seq)].duration)
            init = await store.get(whole.init_key)
            assert {p.init_key for p in parts.values()} == {whole.init_key}
            chunks = [await store.get(parts[i].key) for i in range(8)]
            segment = await store.get(whole.segment_key)
            # the whole segment is the same media as its parts: same pictures, same times
            joined = decode(init + b"".join(chunks))
            assert joined == decode(init + segment)
            assert fmp4.read_samples(b"".join(chunks)) == fmp4.read_samples(segment)
            start = round(src_parts[0].start * 90000)
            end = round((src_parts[7].start + src_parts[7].duration) * 90000)
            assert [t for t, _ in joined] == source_pts(source, start, end)  # every source picture
            assert [k for _, k in joined] == [True] + [False] * (len(joined) - 1)
    # continuous across the independently encoded segments: segment 1 starts where 0 ends
    for rung in RUNGS:
        a, b = seg_ready[(rung, 0)], seg_ready[(rung, 1)]
        assert a.start + a.duration == pytest.approx(b.start, abs=1e-6)


async def test_a_worker_killed_mid_segment_is_resumed_at_the_next_part(
    tmp_path: Path, source: Source
) -> None:
    store = LocalStore(tmp_path / "store")
    bus = MemoryBus()
    everything = bus.subscribe(">")
    watch = bus.subscribe(f"segment.{STREAM}")
    svc = SegmenterService(store, bus, 2.0, Ladder(LADDER), "ultrafast", part_target=0.25)
    tc = TranscodeCoordinator(bus, store.root.as_uri(), workers=1, heal=False, backoff=0.05)
    await tc.start()
    killed: dict[str, tuple[int, float]] = {}  # stored part -> (inode, mtime) when killed
    try:
        feeding = asyncio.create_task(publish(svc, source, "b1"))
        # SIGKILL the worker as soon as it announced part 2 of segment 0's top rung
        await collect(watch, lambda m: any(isinstance(x, PartReady) and x.rendition == RUNGS[0]
                                           and x.sequence == 0 and x.index == 2 for x in m))  # fmt: skip
        pid = tc.workers[0].pid
        assert pid is not None and tc.workers[0].current is not None
        os.kill(pid, signal.SIGKILL)
        while tc.workers[0].pid == pid and tc.workers[0].alive:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # its ffmpeg (orphaned, its input gone) writes nothing more
        for rung in RUNGS:
            for key in await store.list(keys.rendition_prefix(STREAM, "b1", rung)):
                if keys.parse(key).kind == "part":  # type: ignore[union-attr]
                    st = store.path_for(key).stat()
                    killed[key] = (st.st_ino, st.st_mtime_ns)
        await feeding
        msgs = await collect(everything, lambda m: sum(
            isinstance(x, SegmentReady) and x.rendition in RUNGS for x in m) == 4, timeout=60)  # fmt: skip
        snap = tc.snapshot()
    finally:
        await tc.aclose()
        await svc.aclose()
        await bus.aclose()
    assert snap["worker_restarts"] >= 1 and snap["retries"] >= 1
    assert any(keys.parse(k).index >= 2 for k in killed)  # type: ignore[union-attr]
    for key, (ino, mtime) in killed.items():  # nothing stored was written again
        st = store.path_for(key).stat()
        assert (st.st_ino, st.st_mtime_ns) == (ino, mtime), key
    seg_ready = {(m.rendition, m.sequence): m for m in msgs if isinstance(m, SegmentReady)}
    src_parts = parts_of(msgs, "source", 0)
    for rung in RUNGS:
        parts = parts_of(msgs, rung, 0)
        assert sorted(parts) == list(range(8))
        first_new = min(i for i in range(8) if keys.part(STREAM, "b1", rung, 0, i) not in killed)
        assert 0 < first_new < 8
        assert parts[first_new].independent  # the resumed encode starts with an IDR
        whole = seg_ready[(rung, 0)]
        init = await store.get(whole.init_key)
        assert {p.init_key for p in parts.values()} == {whole.init_key}
        chunks = [await store.get(parts[i].key) for i in range(8)]
        # every part decodes, in order, with every source picture at its time
        pictures = decode(init + b"".join(chunks))
        start = round(src_parts[0].start * 90000)
        end = round((src_parts[7].start + src_parts[7].duration) * 90000)
        assert [t for t, _ in pictures] == source_pts(source, start, end)
        keyframes = [t for t, k in pictures if k]
        assert keyframes[0] == start and round(parts[first_new].start * 90000) in keyframes
        for i in range(8):  # each part alone, after the init and the parts before it
            assert len(decode(init + b"".join(chunks[: i + 1]))) == sum(
                len(fmp4.read_samples(c)[fmp4.VIDEO_TRACK]) for c in chunks[: i + 1])
            assert parts[i].start == pytest.approx(src_parts[i].start, abs=1e-9)
        assert fmp4.read_samples(b"".join(chunks)) == fmp4.read_samples(await store.get(whole.segment_key))
        # the next segment (not interrupted) continues the timeline
        nxt = seg_ready[(rung, 1)]
        assert whole.start + whole.duration == pytest.approx(nxt.start, abs=1e-6)


async def stored_source(tmp_path: Path, src: Source) -> tuple[LocalStore, list[TranscodeJob]]:
    """The segmenter's output for ``src`` in a store (no transcoder running), and its jobs."""
    store = LocalStore(tmp_path / "store")
    bus = MemoryBus()
    jobs = bus.subscribe("job.>")
    svc = SegmenterService(store, bus, 2.0, Ladder(LADDER), "ultrafast", part_target=0.25)
    await publish(svc, src, "b1", realtime=False)
    got = [m for m in await collect(jobs, lambda m: len(m) == 2) if isinstance(m, TranscodeJob)]
    await svc.aclose()
    await bus.aclose()
    return store, got


async def test_a_job_for_a_complete_segment_and_one_whose_parts_are_gone(
    tmp_path: Path, source: Source, ffmpeg_exe: str
) -> None:
    """A redelivery (or heal) after the segment is complete reads the stored parts; with
    the source parts gone, it reads the whole source segment: the same outputs."""
    store, jobs = await stored_source(tmp_path, source)
    notes: list[WorkerPart] = []

    async def emit(p: WorkerPart) -> None:
        notes.append(p)

    reply = await run_stream_job(jobs[0], store, exe=ffmpeg_exe, timeout=60, emit=emit)
    assert reply.ok and not reply.reused and reply.duration == pytest.approx(2.0, abs=0.05)
    assert sorted((p.rendition, p.index) for p in notes) == sorted((r, i) for r in RUNGS for i in range(8))
    first = {o.rendition: await store.get(o.segment_key) for o in reply.outputs}
    again = await run_stream_job(jobs[0], store, exe=ffmpeg_exe, timeout=60, emit=emit)
    assert again.reused and again.duration == reply.duration  # the outputs record
    # the source parts are gone, and so is what the first run stored
    for key in await store.list(keys.broadcast_prefix(STREAM, "b1")):
        p = keys.parse(key)
        if p is not None and (p.kind == "part" or p.kind == "job" or (p.kind == "segment" and p.rendition in RUNGS)):
            await store.delete(key)
    notes.clear()
    reply = await run_stream_job(jobs[0], store, exe=ffmpeg_exe, timeout=60, emit=emit)
    assert reply.ok and sorted(p.index for p in notes if p.rendition == RUNGS[0]) == list(range(8))
    for o in reply.outputs:
        init = await store.get(o.init_key)
        assert decode(init + await store.get(o.segment_key)) == decode(init + first[o.rendition])


async def test_a_source_part_that_never_comes_fails_the_job_at_its_deadline(
    tmp_path: Path, source: Source, ffmpeg_exe: str
) -> None:
    store, jobs = await stored_source(tmp_path, source)
    # segment 1 stops after its third part: the publisher's node died, say
    for key in await store.list(keys.rendition_prefix(STREAM, "b1", "source")):
        p = keys.parse(key)
        if p is not None and p.sequence == 1 and (p.kind == "segment" or p.index >= 3):
            await store.delete(key)
    notes: list[WorkerPart] = []

    async def emit(p: WorkerPart) -> None:
        notes.append(p)

    t0 = time.monotonic()
    with pytest.raises(JobError, match="source part 3 .* did not come within 1.5 s"):
        await run_stream_job(jobs[1], store, exe=ffmpeg_exe, timeout=60, emit=emit, part_wait=1.5)
    assert 1.5 <= time.monotonic() - t0 < 10
    # what it could make before is stored and announced (a retry goes on from there)
    assert sorted(p.index for p in notes if p.rendition == RUNGS[0]) == [0, 1, 2]
    assert not await store.exists(keys.segment(STREAM, "b1", RUNGS[0], 1))


async def test_parts_are_found_without_wakeups(tmp_path: Path, source: Source, ffmpeg_exe: str) -> None:
    """Every wake-up lost: the worker finds each part by polling the store."""
    store = LocalStore(tmp_path / "store")
    bus = MemoryBus()
    jobs = bus.subscribe("job.>")
    svc = SegmenterService(store, bus, 2.0, Ladder(LADDER), "ultrafast", part_target=0.25)
    feeding = asyncio.create_task(publish(svc, source, "b1"))
    (job,) = [m for m in await collect(jobs, lambda m: len(m) == 1) if isinstance(m, TranscodeJob)]
    assert not await store.exists(job.source_segment_key)  # the job is out before the segment
    notes: list[tuple[WorkerPart, bool]] = []

    async def emit(p: WorkerPart) -> None:
        notes.append((p, await store.exists(job.source_segment_key)))

    reply = await run_stream_job(job, store, exe=ffmpeg_exe, timeout=60, emit=emit, wakeups=Wakeups(), poll=0.05)
    await feeding
    await svc.aclose()
    await bus.aclose()
    assert reply.ok
    top = [(p.index, complete) for p, complete in notes if p.rendition == RUNGS[0]]
    assert [i for i, _ in top] == list(range(8)) and not top[0][1]  # part 0 before the segment was whole
    assert [p.final for p, _ in notes if p.rendition == RUNGS[0]] == [False] * 7 + [True]
