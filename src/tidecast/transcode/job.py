"""Run one transcode job: source segment in, one CMAF segment per rung out.

Steps: fetch the source init + segment from the store; ONE ffmpeg decodes it
once and encodes every rung that fits the source (never upscaling); each
video-only output is split into its init (ftyp+moov) and media part
(moof+mdat), and its ``tfdt`` is re-stamped so the rendition's first picture
is shown exactly when the source's was. Audio is the segmenter's shared audio
rendition, so every rendition stays in sync with the same audio. Outputs
go to deterministic keys, so running a job twice writes the same objects.
Init segments are keyed by a hash of their bytes: renditions keep one init
segment until the encoding parameters really change (a heal job, encoding the
same rung with the same preset later, lands on the live rendition's init).

Last of all the job writes its *outputs record* (``keys.job_outputs``): a small
JSON object naming what it stored. A redelivered job finds the record and
returns those outputs without encoding anything (``reused``); a job that finds
the record only after encoding (another attempt finished first) still writes
it and says so (``duplicate``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from tidecast import ffmpeg, keys
from tidecast.media import fmp4, h264
from tidecast.media.errors import MediaError
from tidecast.messages import RenditionOutput, TranscodeJob, WorkerReply
from tidecast.store.base import Store
from tidecast.transcode.ladder import Rung

__all__ = ["JobError", "RenditionOutput", "check_outputs", "encoded_rungs", "heal_job", "outputs_key",
           "planned_rungs", "rendition_prefix", "run_job", "skipped_rungs"]  # fmt: skip

log = logging.getLogger("tidecast.transcode.job")

MAX_RECORD = 64 << 10  # bytes: an outputs record names a few objects


class JobError(RuntimeError):
    """The job cannot be done (bad source, ffmpeg failure); it may be retried."""


def rendition_prefix(job: TranscodeJob, rendition: str) -> str:
    return keys.rendition_prefix(job.stream, job.broadcast, rendition)


def planned_rungs(job: TranscodeJob) -> tuple[Rung, ...]:
    """The rungs the segmenter planned for the job's source (top first)."""
    return tuple(Rung.from_dict(dict(d)) for d in job.rungs)


def encoded_rungs(job: TranscodeJob) -> tuple[Rung, ...]:
    """The planned rungs the job really encodes: all but those it skips (backpressure)."""
    return tuple(r for r in planned_rungs(job) if r.name not in job.skip)


def skipped_rungs(job: TranscodeJob) -> tuple[Rung, ...]:
    return tuple(r for r in planned_rungs(job) if r.name in job.skip)


def outputs_key(job: TranscodeJob) -> str:
    """Where the job's outputs record goes (one per sequence and set of encoded rungs)."""
    names = tuple(r.name for r in encoded_rungs(job))
    return keys.job_outputs(job.stream, job.broadcast, job.sequence, names)


_OUTPUT_FIELDS = tuple(f.name for f in dataclasses.fields(RenditionOutput))
_INT_FIELDS = ("size", "width", "height")


def check_outputs(job: TranscodeJob, outputs: Sequence[RenditionOutput]) -> str:
    """Why ``outputs`` are not what ``job`` makes ("" when they are): exactly one output
    per encoded rung, fields of the right types, at the job's own keys."""
    want = [r.name for r in encoded_rungs(job)]
    got = [o.rendition for o in outputs]
    if sorted(got) != sorted(want):
        return f"outputs for {got}, expected {want}"
    for o in outputs:
        for name in _OUTPUT_FIELDS:
            value = getattr(o, name)
            if name in _INT_FIELDS:
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            else:
                ok = isinstance(value, str)
            if not ok:
                return f"{o.rendition}: bad {name} {value!r}"
        if o.segment_key != keys.segment(job.stream, job.broadcast, o.rendition, job.sequence):
            return f"{o.rendition}: unexpected segment key {o.segment_key!r}"
        parsed = keys.parse(o.init_key)
        if parsed is None or (parsed.kind, parsed.stream, parsed.broadcast, parsed.rendition) != (
            "init", job.stream, job.broadcast, o.rendition):
            return f"{o.rendition}: unexpected init key {o.init_key!r}"
    return ""


def outputs_record(job: TranscodeJob, outputs: Sequence[RenditionOutput]) -> bytes:
    return json.dumps({
        "stream": job.stream, "broadcast": job.broadcast, "sequence": job.sequence,
        "rungs": [r.name for r in encoded_rungs(job)], "written_at": time.time(),
        "outputs": [dataclasses.asdict(o) for o in outputs],
    }, separators=(",", ":")).encode()  # fmt: skip


def parse_record(job: TranscodeJob, data: bytes) -> tuple[RenditionOutput, ...]:
    """The outputs an outputs record names; JobError if it is not one for ``job``."""
    try:
        if len(data) > MAX_RECORD:
            raise ValueError(f"{len(data)} bytes")
        raw = json.loads(data)
        outputs = tuple(
            RenditionOutput(**{name: o[name] for name in _OUTPUT_FIELDS}) for o in raw["outputs"]
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise JobError(f"bad outputs record: {exc!r}") from None
    why = check_outputs(job, outputs)
    if why:
        raise JobError(f"outputs record of another job: {why}")
    return outputs


async def stored_outputs(job: TranscodeJob, store: Store) -> tuple[RenditionOutput, ...] | None:
    """What an earlier attempt of ``job`` stored, if one finished (None otherwise)."""
    key = outputs_key(job)
    if not await store.exists(key):
        return None
    try:
        outputs = parse_record(job, await store.get(key))
    except JobError as exc:
        log.warning("%s: %s; encoding again", key, exc)
        return None
    for o in outputs:
        for k in (o.init_key, o.segment_key):
            if not await store.exists(k):
                log.warning("%s names %s, which is not stored; encoding again", key, k)
                return None
    return outputs


def output_size(rung: Rung, src_w: int, src_h: int) -> tuple[int, int]:
    if src_h > src_w:  # portrait: the rung height is the short side
        return rung.height, max(2, round(rung.height * src_h / src_w / 2) * 2)
    return rung.width_for(src_w, src_h), rung.height


def split_output(data: bytes) -> tuple[bytes, bytes]:
    """ffmpeg's fragmented MP4 -> (ftyp+moov, moof+mdat...)."""
    init_end = media_start = None
    for box in fmp4.iter_boxes(data):
        if box.type == "moov":
            init_end = box.end
        elif box.type == "moof" and media_start is None:
            media_start = box.start
        elif box.type == "mfra":
            data = data[: box.start]
            break
    if init_end is None or media_start is None:
        raise MediaError("transcoder output has no moov or no moof")
    return data[:init_end], data[media_start:]


def _read_descriptor_header(data: bytes | bytearray, pos: int) -> tuple[int, int, int]:
    """(tag, payload size, payload start) of an MPEG-4 descriptor (ISO/IEC 14496-1)."""
    tag = data[pos]
    size = 0
    pos += 1
    for _ in range(4):
        b = data[pos]
        pos += 1
        size = (size << 7) | (b & 0x7F)
        if not b & 0x80:
            break
    return tag, size, pos


def normalize_init(init: bytes) -> bytes:
    """Zero the bitrate fields ffmpeg fills from each segment's own bytes.

    ``esds`` (DecoderConfigDescriptor max/avg bitrate) and ``btrt`` vary with
    every segment although the decoder configuration does not; without them an
    init segment depends only on the encoding parameters.
    """
    out = bytearray(init)
    pos = out.find(b"btrt")
    while pos >= 4:
        out[pos + 4 : pos + 16] = bytes(12)
        pos = out.find(b"btrt", pos + 4)
    pos = out.find(b"esds")
    while pos >= 4:
        tag, _, p = _read_descriptor_header(out, pos + 8)  # after version/flags
        if tag == 0x03:
            es_flags = out[p + 2]
            p += 3 + (2 if es_flags & 0x80 else 0) + (2 if es_flags & 0x20 else 0)
            if es_flags & 0x40:
                p += 1 + out[p]
            tag, _, p = _read_descriptor_header(out, p)
            if tag == 0x04:
                out[p + 5 : p + 13] = bytes(8)  # maxBitrate, avgBitrate
        pos = out.find(b"esds", pos + 4)
    return bytes(out)


def find_avcc(init: bytes) -> bytes:
    pos = init.find(b"avcC")
    if pos < 4:
        raise MediaError("no avcC box in the transcoder's init segment")
    (size,) = struct.unpack_from(">I", init, pos - 4)
    return init[pos + 4 : pos - 4 + size]


async def run_job(
    job: TranscodeJob, store: Store, *, exe: str, timeout: float, workdir: Path | None = None,
    after_encode: Callable[[], Awaitable[None]] | None = None,
) -> WorkerReply:  # fmt: skip
    """Encode the job's rungs (or reuse what an earlier attempt stored); JobError if it fails.

    ``after_encode`` is awaited once the renditions are stored, before the outputs
    record is looked at again (the worker's fault hook: a worker paused there).
    """
    rungs = encoded_rungs(job)
    if not rungs:
        raise JobError(f"no rung to encode for a {job.width}x{job.height} source")
    earlier = await stored_outputs(job, store)
    if earlier is not None:
        return WorkerReply(ok=True, outputs=earlier, reused=True)
    outputs = await _encode(job, store, rungs, exe=exe, timeout=timeout, workdir=workdir)
    if after_encode is not None:
        await after_encode()
    key = outputs_key(job)
    duplicate = await store.exists(key)  # another attempt finished while we encoded
    await store.put(key, outputs_record(job, outputs))
    return WorkerReply(ok=True, outputs=outputs, duplicate=duplicate)


async def _encode(
    job: TranscodeJob, store: Store, rungs: tuple[Rung, ...], *, exe: str, timeout: float,
    workdir: Path | None,
) -> tuple[RenditionOutput, ...]:  # fmt: skip
    src_init = await store.get(job.source_init_key)
    src_seg = await store.get(job.source_segment_key)
    try:
        src_times = fmp4.read_base_decode_times(src_seg)
        src_cts = fmp4.read_first_composition_offsets(src_seg)
    except MediaError as exc:
        raise JobError(f"bad source segment {job.source_segment_key}: {exc}") from exc
    if fmp4.VIDEO_TRACK not in src_times:
        raise JobError(f"source segment {job.source_segment_key} has no video")
    first_pts = src_times[fmp4.VIDEO_TRACK] + src_cts.get(fmp4.VIDEO_TRACK, 0)
    with tempfile.TemporaryDirectory(prefix="tidecast-job-", dir=workdir) as tmp:
        src_path = Path(tmp) / "source.mp4"
        await asyncio.to_thread(src_path.write_bytes, src_init + src_seg)
        outs = []
        for r in rungs:
            w, h = output_size(r, job.width, job.height)
            outs.append(
                ffmpeg.RungOutput(w, h, r.video_kbps, r.profile, str(Path(tmp) / f"{r.name}.mp4"))
            )
        args = ffmpeg.transcode_segment_args(str(src_path), outs, job.preset, exe=exe)
        try:
            await ffmpeg.run(args, timeout, name=f"transcode {job.stream}#{job.sequence}")
        except ffmpeg.FFmpegError as exc:
            raise JobError(str(exc)) from exc
        results = []
        for r, o in zip(rungs, outs, strict=True):
            data = await asyncio.to_thread(Path(o.path).read_bytes)
            results.append(await _store_rendition(job, store, r, data, first_pts))
    return tuple(results)


async def _store_rendition(
    job: TranscodeJob, store: Store, rung: Rung, data: bytes, first_pts: int
) -> RenditionOutput:
    try:
        init, media = split_output(data)
        init = normalize_init(init)
        out_cts = fmp4.read_first_composition_offsets(media).get(fmp4.VIDEO_TRACK, 0)
        # the first picture is shown exactly when the source's first picture was
        media = fmp4.rewrite_base_decode_times(media, {fmp4.VIDEO_TRACK: first_pts - out_cts})
        video = h264.parse_avcc(find_avcc(init))
    except MediaError as exc:
        raise JobError(f"unusable transcoder output for {rung.name}: {exc}") from exc
    init_key = keys.hashed_init(job.stream, job.broadcast, rung.name, init)
    if not await store.exists(init_key):
        await store.put(init_key, init)
    segment_key = keys.segment(job.stream, job.broadcast, rung.name, job.sequence)
    await store.put(segment_key, media)
    return RenditionOutput(
        rung.name, init_key, segment_key, len(media), video.codec, video.width, video.height
    )


def heal_job(job: TranscodeJob, rungs: Sequence[str]) -> TranscodeJob:
    """A low-priority job re-encoding ``rungs`` of ``job``'s segment (every other planned
    rung skipped), for a recording that live left degraded."""
    keep = set(rungs)
    skip = tuple(r.name for r in planned_rungs(job) if r.name not in keep)
    return dataclasses.replace(job, heal=True, skip=skip)
