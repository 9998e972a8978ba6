"""Run one streaming transcode job (LL-HLS): source parts in as they are stored, each
rung's parts out as they are encoded, then the whole segments.

The job arrives when the segment's first frame is in. ONE ffmpeg per job
(``ffmpeg.transcode_stream_args``) reads the source's init segment and parts on
stdin as they appear in the store, decodes once, encodes every rung, and writes
each rung as FLV on its own pipe the moment a frame is encoded. A
``media.parts.RenditionCutter`` per rung turns those frames into CMAF parts on the
source timeline, aligned with the source parts by the boundary rule; each part is
stored (``keys.part``), then announced to the coordinator (a ``WorkerPart`` line,
which it publishes as ``PartReady``). A part that appears in the store while this
attempt makes it (another attempt runs at the same time) fails this attempt: the
retry resumes after the other's parts. When the source segment is complete, every
rung's whole segment is stored: its parts concatenated behind one ``styp`` (the same
media), at the same keys as a whole-segment job, then the outputs record.

Waiting for the source: each part is looked for in the store at its deterministic
key, after each wake-up (the segmenter announces parts on ``part.<stream>``; the
coordinator passes them on) and at least every ``poll`` seconds; a part that does
not come within ``part_wait`` seconds fails the job (retried as any failed job). A
part missing while the whole source segment is stored (a part the store refused, a
job for a segment that is already complete) is read from the segment instead. The
segment's last part is known as such from its wake-up, or because the segment is
stored by then (the segmenter stores it first).

Resuming (a worker died mid-segment, the job came back): nothing stored is written
again. Each rung starts at its first part not in the store: ffmpeg still decodes
from the segment's keyframe, drops the frames before that part's boundary, and
encodes from there with an IDR, so the part is independent and the parts before it
(the earlier worker's) stay as they are; the encoder's parameter sets, and so the
init segment, are the same. The whole segment is made from the stored parts. A rung
whose parts are all stored is not encoded again (its ``keys.job_rendition`` record,
written before its first part, names its init segment).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tidecast import ffmpeg, keys
from tidecast.media import fmp4, h264
from tidecast.media.errors import MediaError
from tidecast.media.flv import AvcConfig, FlvReader
from tidecast.media.parts import CutPart, RenditionCutter, SourceTimeline, boundary
from tidecast.messages import RenditionOutput, TranscodeJob, WorkerPart, WorkerReply
from tidecast.store.base import ObjectNotFound, Store
from tidecast.transcode.job import (
    JobError,
    encoded_rungs,
    output_size,
    outputs_key,
    parse_record,
)
from tidecast.transcode.ladder import Rung

log = logging.getLogger("tidecast.transcode.stream")

SOURCE = "source"
PART_WAIT = 10.0  # s a source part may take to come before the job fails
POLL = 0.25  # s between looks in the store when no wake-up came
MAX_PARTS = 1000  # a segment lasts at most a few minutes, of parts of 0.1 s at least
READ_CHUNK = 1 << 16

Emit = Callable[[WorkerPart], Awaitable[None]]


class Wakeups:
    """Wake-ups for the job in hand: the segmenter stored source part ``index``."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.final: int | None = None  # the index of the segment's last part, if told

    def wake(self, index: int, final: bool) -> None:
        if final:
            self.final = index
        self._event.set()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        self._event.clear()


def _video(data: bytes) -> list[fmp4.TimedSample]:
    return fmp4.read_samples(data).get(fmp4.VIDEO_TRACK, [])


class _Source:
    """The source parts of one segment, from the store, in order."""

    def __init__(self, job: TranscodeJob, store: Store, wakeups: Wakeups, part_wait: float,
                 poll: float) -> None:  # fmt: skip
        self.job, self.store, self.wakeups = job, store, wakeups
        self.part_wait, self.poll = part_wait, poll
        self.index = 0  # the next part to read
        self.decode_end: int | None = None  # of what was read so far
        self.segment_key = job.source_segment_key
        self._segment: list[fmp4.TimedSample] | None = None

    async def _get(self, key: str) -> bytes | None:
        try:
            return await self.store.get(key)
        except ObjectNotFound:
            return None

    async def segment(self) -> list[fmp4.TimedSample] | None:
        """The whole source segment's video, once it is stored."""
        if self._segment is None:
            data = await self._get(self.segment_key)
            if data is not None:
                try:
                    self._segment = _video(data)
                except MediaError as exc:
                    raise JobError(f"bad source segment {self.segment_key}: {exc}") from exc
        return self._segment

    async def next(self) -> tuple[bytes, list[fmp4.TimedSample], bool]:
        """The next part's bytes, its video samples, and whether the segment ends with it."""
        job = self.job
        deadline = time.monotonic() + self.part_wait
        while True:
            key = keys.part(job.stream, job.broadcast, SOURCE, job.sequence, self.index)
            data = await self._get(key)
            if data is not None:
                try:
                    samples = _video(data)
                except MediaError as exc:
                    raise JobError(f"bad source part {key}: {exc}") from exc
                if not samples:
                    raise JobError(f"source part {key} has no video")
                if self.decode_end is not None and samples[0].dts != self.decode_end:
                    raise JobError(f"source part {key} does not follow the part before it")
                self.index += 1
                self.decode_end = samples[-1].dts + samples[-1].duration
                ended = self.wakeups.final == self.index - 1
                if not ended:
                    seg = await self.segment()
                    ended = seg is not None and seg[-1].dts == samples[-1].dts
                return data, samples, ended
            seg = await self.segment()
            if seg is not None:  # the part is missing but the segment is whole: the rest
                rest = [s for s in seg if self.decode_end is None or s.dts >= self.decode_end]
                self.index = MAX_PARTS
                if not rest:
                    return b"", [], True
                frag = fmp4.Fragment(fmp4.VIDEO_TRACK, rest[0].dts, [s.sample() for s in rest])
                return fmp4.media_segment(job.sequence + 1, [frag], styp=False), rest, True
            left = deadline - time.monotonic()
            if left <= 0:
                raise JobError(f"source part {self.index} of {job.stream}#{job.sequence} did not "
                               f"come within {self.part_wait:g} s")  # fmt: skip
            await self.wakeups.wait(min(self.poll, left))


@dataclass
class _Rung:
    """One rung of the job: what is stored already and what this encode makes."""

    rung: Rung
    width: int
    height: int
    first_part: int  # the first part not stored when the job began
    record: dict[str, object] | None  # its keys.job_rendition record, if written
    cutter: RenditionCutter | None = None
    init_key: str = ""
    codecs: str = ""
    out_width: int = 0
    out_height: int = 0
    parts: dict[int, bytes] = field(default_factory=dict)  # as stored, by index
    frames: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


async def _stored_parts(job: TranscodeJob, store: Store, rendition: str) -> int:
    n = 0
    while n < MAX_PARTS and await store.exists(keys.part(job.stream, job.broadcast, rendition, job.sequence, n)):
        n += 1
    return n


async def _record(job: TranscodeJob, store: Store, rendition: str) -> dict[str, object] | None:
    key = keys.job_rendition(job.stream, job.broadcast, job.sequence, rendition)
    try:
        raw = json.loads(await store.get(key))
    except ObjectNotFound:
        return None
    except ValueError:
        log.warning("%s is not a rendition record; its rung is encoded again", key)
        return None
    ok = isinstance(raw, dict) and isinstance(raw.get("init_key"), str) and isinstance(raw.get("codecs"), str)
    return raw if ok else None


def _part_note(job: TranscodeJob, rendition: str, index: int, data: bytes, init_key: str,
               final: bool) -> WorkerPart:  # fmt: skip
    samples = _video(data)
    return WorkerPart(
        rendition=rendition, index=index, start=samples[0].dts / fmp4.VIDEO_TIMESCALE,
        duration=sum(s.duration for s in samples) / fmp4.VIDEO_TIMESCALE,
        key=keys.part(job.stream, job.broadcast, rendition, job.sequence, index), init_key=init_key,
        size=len(data), independent=samples[0].keyframe, final=final,
    )  # fmt: skip


def _timing(record: bytes) -> tuple[float, float, float]:
    try:
        raw = json.loads(record)
        t = raw.get("timing", {})
        return float(t.get("start", 0.0)), float(t.get("duration", 0.0)), float(t.get("frame_rate", 0.0))
    except (ValueError, TypeError, AttributeError):
        return 0.0, 0.0, 0.0


async def run_stream_job(
    job: TranscodeJob, store: Store, *, exe: str, timeout: float, emit: Emit,
    wakeups: Wakeups | None = None, part_wait: float = PART_WAIT, poll: float = POLL,
) -> WorkerReply:  # fmt: skip
    """Encode the job's rungs part by part (or reuse what an earlier attempt stored)."""
    rungs = encoded_rungs(job)
    if not rungs:
        raise JobError(f"no rung to encode for a {job.width}x{job.height} source")
    key = outputs_key(job)
    if await store.exists(key):
        record = await store.get(key)
        try:
            outputs = parse_record(job, record)
        except JobError as exc:
            log.warning("%s: %s; encoding again", key, exc)
        else:
            if all([await store.exists(o.segment_key) for o in outputs]):
                start, duration, rate = _timing(record)
                return WorkerReply(ok=True, outputs=outputs, reused=True, start=start,
                                   duration=duration, frame_rate=rate)  # fmt: skip
    try:
        async with asyncio.timeout(timeout):
            return await _Job(job, store, exe, emit, wakeups or Wakeups(), part_wait, poll).run(rungs)
    except TimeoutError:
        raise JobError(f"{job.stream}#{job.sequence} took more than {timeout:g} s") from None


class _Job:
    def __init__(self, job: TranscodeJob, store: Store, exe: str, emit: Emit, wakeups: Wakeups,
                 part_wait: float, poll: float) -> None:  # fmt: skip
        self.job, self.store, self.exe, self.emit = job, store, exe, emit
        self.source = _Source(job, store, wakeups, part_wait, poll)
        self.timeline: SourceTimeline | None = None
        self.first_dts = 0

    async def run(self, plan: tuple[Rung, ...]) -> WorkerReply:
        job, store = self.job, self.store
        try:
            src_init = await store.get(job.source_init_key)
        except ObjectNotFound:
            raise JobError(f"source init segment {job.source_init_key} is not stored") from None
        data, samples, ended = await self.source.next()
        if not samples or not samples[0].keyframe:
            raise JobError(f"source segment {job.stream}#{job.sequence} does not start with a keyframe")
        tl = self.timeline = SourceTimeline(samples[0].pts, job.part_target)
        self.first_dts = samples[0].dts
        rungs = []
        for rung in plan:
            w, h = output_size(rung, job.width, job.height)
            first = await _stored_parts(job, store, rung.name)
            rungs.append(_Rung(rung, w, h, first, await _record(job, store, rung.name) if first else None))
        # what a dead attempt stored (and may not have announced): its last part again
        seg_done = await self.source.segment()
        last = None
        if seg_done is not None:
            whole = SourceTimeline(tl.start, job.part_target)
            whole.add(seg_done)
            last = whole.last_part
        for r in rungs:
            if r.first_part and r.record is not None:
                prev = r.first_part - 1
                raw = await store.get(keys.part(job.stream, job.broadcast, r.rung.name, job.sequence, prev))
                r.parts[prev] = raw
                await self.emit(_part_note(job, r.rung.name, prev, raw, str(r.record["init_key"]),
                                           final=last == prev))  # fmt: skip
        todo = [r for r in rungs if last is None or r.first_part <= last]
        tl.add(samples)
        if ended:
            tl.end()
        if todo:
            await self._encode(todo, src_init + data, ended)
        else:
            while not ended:  # nothing to encode: still learn the segment's end
                _, more, ended = await self.source.next()
                tl.add(more)
            tl.end()
        return await self._finish(rungs)

    async def _encode(self, todo: list[_Rung], first: bytes, ended: bool) -> None:
        job, tl = self.job, self.timeline
        assert tl is not None
        pipes: list[tuple[int, int]] = []
        proc: ffmpeg.FFmpegProcess | None = None
        readers: list[asyncio.Task[None]] = []
        try:
            for _ in todo:
                pipes.append(os.pipe())
            outs = [
                ffmpeg.StreamRungOutput(
                    r.width, r.height, r.rung.video_kbps, r.rung.profile, f"pipe:{w}",
                    boundary(r.first_part, tl.start, job.part_target) if r.first_part else None,
                )
                for r, (_, w) in zip(todo, pipes, strict=True)
            ]  # fmt: skip
            for r in todo:
                r.cutter = RenditionCutter(tl, r.first_part, job.sequence)
            args = ffmpeg.transcode_stream_args(outs, job.preset, exe=self.exe)
            proc = await ffmpeg.spawn_piped(args, f"transcode {job.stream}#{job.sequence}",
                                            [w for _, w in pipes])  # fmt: skip
            for _, w in pipes:
                os.close(w)
            readers = [asyncio.create_task(self._read(r, fd)) for r, (fd, _) in zip(todo, pipes, strict=True)]
            pipes = []  # the readers own the read ends now
            stdin = proc.proc.stdin
            assert stdin is not None
            feed: bytes = first
            while True:
                try:
                    stdin.write(feed)
                    await stdin.drain()
                except (BrokenPipeError, ConnectionResetError):
                    break  # ffmpeg is gone: its exit code says why
                for r in todo:
                    await self._cut(r, r.cutter.check() if r.cutter else [])
                if ended:
                    break
                feed, samples, ended = await self.source.next()
                tl.add(samples)
                if ended:
                    tl.end()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                stdin.close()
            rc = await proc.wait(60)
            results = await asyncio.gather(*readers, return_exceptions=True)
            for res in results:  # a reader's error explains ffmpeg's broken pipe, if any
                if isinstance(res, BaseException):
                    raise res
            if rc != 0:
                tail = "\n".join(proc.stderr_tail[-10:])
                raise JobError(f"transcode {job.stream}#{job.sequence} exited with {rc}:\n{tail}")
        finally:
            for t in readers:
                t.cancel()
            for t in readers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            if proc is not None:
                await proc.stop(grace=1.0)
            for rfd, wfd in pipes:
                os.close(rfd)
                os.close(wfd)

    async def _read(self, r: _Rung, fd: int) -> None:
        """One rung's encoder output: FLV in, parts stored and announced."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 24)
        pipe = os.fdopen(fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        flv = FlvReader()
        assert r.cutter is not None
        try:
            while chunk := await reader.read(READ_CHUNK):
                try:
                    events = flv.feed(chunk)
                except MediaError as exc:
                    raise JobError(f"unusable encoder output for {r.rung.name}: {exc}") from exc
                for ev in events:
                    if isinstance(ev, AvcConfig):
                        await self._init(r, ev.avcc)
                        continue
                    if not r.init_key:
                        raise JobError(f"{r.rung.name}: an encoded frame before the AVC sequence header")
                    r.frames += 1
                    try:
                        cut = r.cutter.add(ev)
                    except MediaError as exc:
                        raise JobError(f"{r.rung.name}: {exc}") from exc
                    await self._cut(r, cut)
            try:
                flv.end()
                cut = r.cutter.finish()
            except MediaError as exc:
                raise JobError(f"{r.rung.name}: {exc}") from exc
            await self._cut(r, cut)
        finally:
            transport.close()

    async def _init(self, r: _Rung, avcc: bytes) -> None:
        job, store = self.job, self.store
        try:
            cfg = h264.parse_avcc(avcc)
        except MediaError as exc:
            raise JobError(f"{r.rung.name}: bad AVC configuration from the encoder: {exc}") from exc
        init = fmp4.init_segment([fmp4.Track(fmp4.VIDEO_TRACK, cfg, fmp4.VIDEO_TIMESCALE)])
        r.init_key = keys.hashed_init(job.stream, job.broadcast, r.rung.name, init)
        r.codecs, r.out_width, r.out_height = cfg.codec, cfg.width, cfg.height
        if r.record is not None and r.record.get("init_key") != r.init_key:
            raise JobError(f"{r.rung.name}: the resumed encode has another init segment "
                           f"({r.init_key}, stored parts use {r.record.get('init_key')})")  # fmt: skip
        if not await store.exists(r.init_key):
            await store.put(r.init_key, init)
        if r.record is None:
            r.record = {"init_key": r.init_key, "codecs": r.codecs, "width": cfg.width, "height": cfg.height}
            rkey = keys.job_rendition(job.stream, job.broadcast, job.sequence, r.rung.name)
            await store.put(rkey, json.dumps(r.record, separators=(",", ":")).encode())

    async def _cut(self, r: _Rung, cut: list[CutPart]) -> None:
        """Store each part (never over one already stored), then announce it."""
        if not cut:
            return
        job, store = self.job, self.store
        async with r.lock:
            for p in cut:
                key = keys.part(job.stream, job.broadcast, r.rung.name, job.sequence, p.index)
                data = p.data
                if await store.exists(key):
                    # another attempt runs beside this one (a redelivery): its part stays, and
                    # ours after it would not follow its pictures; a retry resumes after it
                    raise JobError(f"{key} was stored meanwhile by another attempt of the job")
                await store.put(key, data)
                r.parts[p.index] = data
                await self.emit(WorkerPart(
                    rendition=r.rung.name, index=p.index, start=p.start / fmp4.VIDEO_TIMESCALE,
                    duration=p.duration / fmp4.VIDEO_TIMESCALE, key=key, init_key=r.init_key,
                    size=len(data), independent=p.independent, final=p.final,
                ))  # fmt: skip

    async def _finish(self, rungs: list[_Rung]) -> WorkerReply:
        """Every rung's whole segment from its stored parts, then the outputs record."""
        job, store, tl = self.job, self.store, self.timeline
        assert tl is not None and tl.ended
        last = tl.last_part
        outputs = []
        for r in rungs:
            if r.cutter is not None and not r.cutter.done and r.first_part <= last:
                raise JobError(f"{r.rung.name}: the encoder made {r.frames} frames, not the whole segment")
            chunks = []
            for i in range(last + 1):
                data = r.parts.get(i)
                if data is None:
                    pkey = keys.part(job.stream, job.broadcast, r.rung.name, job.sequence, i)
                    try:
                        data = await store.get(pkey)
                    except ObjectNotFound:
                        if tl.count(i) == 0:
                            continue  # no source frame falls in that part (a gap in the frame rate)
                        raise JobError(f"{pkey} is missing") from None
                chunks.append(data)
            record = r.record or {}
            init_key = r.init_key or str(record.get("init_key", ""))
            codecs = r.codecs or str(record.get("codecs", ""))
            if not init_key:
                raise JobError(f"{r.rung.name}: no init segment is known")
            width = r.out_width or int(record.get("width", r.width))  # type: ignore[call-overload]
            height = r.out_height or int(record.get("height", r.height))  # type: ignore[call-overload]
            media = fmp4.segment_type() + b"".join(chunks)
            segment_key = keys.segment(job.stream, job.broadcast, r.rung.name, job.sequence)
            await store.put(segment_key, media)
            outputs.append(RenditionOutput(r.rung.name, init_key, segment_key, len(media), codecs, width, height))
        decode_end = tl.decode_end or self.first_dts
        duration = (decode_end - self.first_dts) / fmp4.VIDEO_TIMESCALE
        start = self.first_dts / fmp4.VIDEO_TIMESCALE
        rate = round(tl.frames / duration, 3) if duration > 0 else 0.0
        key = outputs_key(job)
        duplicate = await store.exists(key)
        await store.put(key, json.dumps({
            "stream": job.stream, "broadcast": job.broadcast, "sequence": job.sequence,
            "rungs": [r.rung.name for r in rungs], "written_at": time.time(),
            "outputs": [dataclasses.asdict(o) for o in outputs],
            "timing": {"start": start, "duration": duration, "frame_rate": rate},
        }, separators=(",", ":")).encode())  # fmt: skip
        return WorkerReply(ok=True, outputs=tuple(outputs), duplicate=duplicate, start=start,
                           duration=duration, frame_rate=rate)  # fmt: skip
