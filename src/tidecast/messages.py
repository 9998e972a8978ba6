"""Typed messages that stages exchange over the bus.

Small, frozen, JSON-serialisable records: which stream, which broadcast, which
sequence number, media time, wall-clock stamps, and keys of stored objects —
never media bytes. ``encode``/``decode`` are the wire format every bus uses.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, dataclass_transform

MAX_MESSAGE = 1 << 20  # bytes: bus messages are small records, never media


class MessageError(ValueError):
    """Bytes on the bus that are not a known, well-formed message."""


_REGISTRY: dict[str, type[Message]] = {}
_HINTS: dict[type, dict[str, Any]] = {}
M = TypeVar("M", bound="Message")


@dataclass(frozen=True, slots=True)
class Message:
    kind: ClassVar[str] = ""


@dataclass_transform(frozen_default=True)
def message(cls: type[M]) -> type[M]:
    """Class decorator: a frozen dataclass registered under its ``kind``."""
    out = dataclass(frozen=True, slots=True)(cls)
    if out.kind in _REGISTRY:
        raise TypeError(f"two message classes of kind {out.kind!r}")
    _REGISTRY[out.kind] = out
    return out


def encode(msg: Message) -> bytes:
    body = dataclasses.asdict(msg)
    return json.dumps({"kind": msg.kind, "body": body}, separators=(",", ":")).encode()


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
    return hints


def _convert(value: object, tp: Any, where: str) -> object:
    """``value`` (from JSON) as type ``tp``, or MessageError."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, list | tuple):
            inner = args[0] if args else Any
            return tuple(_convert(v, inner, f"{where}[]") for v in value)
    elif origin is dict:
        key_t, val_t = typing.get_args(tp) or (str, Any)
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return {k: _convert(v, val_t, f"{where}.{k}") for k, v in value.items()}
    else:  # pragma: no cover - a field type this module does not use
        raise TypeError(f"unsupported message field type {tp!r}")
    raise MessageError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {type(value).__name__}")


def decode_with_extras(data: bytes) -> tuple[Message, tuple[str, ...]]:
    """The message in ``data`` and the names of fields it carries that this version
    does not know (a newer sender: they are ignored, so rolling upgrades work).

    Raises MessageError for anything else: not JSON, no known ``kind``, a required
    field missing, a field of the wrong type, an oversized message.
    """
    if len(data) > MAX_MESSAGE:
        raise MessageError(f"message of {len(data)} bytes is over the {MAX_MESSAGE} byte limit")
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError(f"not JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("kind"), str):
        raise MessageError("not a message: no kind")
    cls = _REGISTRY.get(raw["kind"])
    if cls is None:
        raise MessageError(f"unknown message kind {raw['kind']!r}")
    body = raw.get("body")
    if not isinstance(body, dict):
        raise MessageError(f"{cls.kind}: no body")
    hints = _hints(cls)
    kwargs: dict[str, object] = {}
    known = set()
    for f in dataclasses.fields(cls):
        known.add(f.name)
        if f.name in body:
            kwargs[f.name] = _convert(body[f.name], hints[f.name], f"{cls.kind}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise MessageError(f"{cls.kind}: required field {f.name!r} is missing")
    try:
        msg = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise MessageError(f"{cls.kind}: {exc}") from None
    return msg, tuple(sorted(k for k in body if k not in known))


def decode(data: bytes) -> Message:
    """The message in ``data`` (unknown extra fields ignored); MessageError if it is none."""
    return decode_with_extras(data)[0]


def excerpt(data: bytes, limit: int = 120) -> str:
    """A short printable excerpt of raw bus bytes, for log lines."""
    text = data[:limit].decode("utf-8", errors="replace")
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text + ("..." if len(data) > limit else "")


@message
class BroadcastStarted(Message):
    kind: ClassVar[str] = "broadcast.started"
    stream: str
    broadcast: str
    started_at: float  # wall clock
    video_codec: str = ""
    width: int = 0
    height: int = 0
    audio_codec: str = ""
    frame_rate: float = 0.0
    part: int = 0  # 0 for a new broadcast; n for the n-th reconnect within the grace period


@message
class BroadcastEnded(Message):
    """A publisher session ended; the broadcast may still resume within the grace period."""

    kind: ClassVar[str] = "broadcast.ended"
    stream: str
    broadcast: str
    ended_at: float
    reason: str = "unpublished"
    segments: int = 0  # source segments the broadcast produced (sequences 0..segments-1)
    part: int = 0


@message
class BroadcastFinished(Message):
    """The broadcast is over for good (no reconnect within the grace period, or shutdown)."""

    kind: ClassVar[str] = "broadcast.finished"
    stream: str
    broadcast: str
    ended_at: float
    reason: str


@message
class SegmentReady(Message):
    """A source segment is stored (init + media objects) and may be packaged/transcoded."""

    kind: ClassVar[str] = "segment.ready"
    stream: str
    broadcast: str
    rendition: str
    sequence: int  # 0-based within the broadcast
    start: float  # media time of the first frame, seconds (source timeline)
    duration: float  # seconds
    init_key: str
    segment_key: str
    size: int
    has_video: bool = True
    has_audio: bool = True
    codecs: str = ""  # RFC 6381, e.g. "avc1.64001f,mp4a.40.2"
    width: int = 0
    height: int = 0
    frame_rate: float = 0.0
    first_frame_arrival: float = 0.0  # wall clock when the first frame reached ingest
    completed_at: float = 0.0  # wall clock when the segment's last frame was in
    stored_at: float = 0.0  # wall clock when the objects were stored
    timings: dict[str, float] = field(default_factory=dict)
    renditions: tuple[str, ...] = ()  # every rendition made from the same source segment
    gap: bool = False  # could not be produced: list it as EXT-X-GAP
    part: int = 0  # publisher session within the broadcast (a reconnect starts a new part)
    heal: bool = False  # made after the fact for a segment first listed as a gap


@message
class PartReady(Message):
    """One LL-HLS part of a rendition's segment is stored (``keys.part``).

    Published on ``segment.<stream>`` (with the segments, so in order): every part of
    a segment before its ``SegmentReady``. ``final`` marks the segment's last part.
    """

    kind: ClassVar[str] = "part.ready"
    stream: str
    broadcast: str
    rendition: str
    sequence: int
    index: int  # 0-based within the segment
    start: float  # media time of the part's first frame, seconds
    duration: float  # seconds
    key: str
    init_key: str
    size: int
    independent: bool  # starts with a keyframe
    final: bool  # the last part of its segment; its SegmentReady follows
    produced_at: float  # wall clock
    part: int = 0  # publisher session within the broadcast
    listed: bool = False  # a source part listed as a rendition beside the ladder (passthrough)


def part_wakeup_subject(stream: str) -> str:
    """Where the segmenter tells transcoders a source part is stored (core, not durable:
    a lost wake-up costs a store poll interval)."""
    return f"part.{stream}"


@message
class TranscodeJob(Message):
    """Encode one stored source segment into the rungs of the ladder it gets.

    ``rungs`` are planned once, by the segmenter, for this source's size (never
    upscaled, top first); every stage after it reads them from the job.
    ``renditions`` names everything made from the same source segment (the rungs
    and the shared audio rendition): the packager waits for all of them.
    A ``heal`` job is low priority: it re-encodes, after the fact, rungs that a
    live job skipped (backpressure) or lost (dead-lettered), for the recording.

    With ``part_target`` (LL-HLS) the job is published when the segment's first
    frame is in, before the segment is complete (``duration`` is 0 then): the worker
    reads the source parts (``keys.part``) as they are stored, makes every rung's
    parts, then the whole segments. Without it the source segment is stored when
    the job is published, and the job reads only that.
    """

    kind: ClassVar[str] = "transcode.job"
    stream: str
    broadcast: str
    sequence: int
    start: float
    duration: float
    source_init_key: str
    source_segment_key: str
    width: int
    height: int
    frame_rate: float
    audio_codec: str  # "" when the source has no audio
    rungs: tuple[dict[str, object], ...]  # Rung.to_dict() of every rung this source gets
    preset: str = "veryfast"
    first_frame_arrival: float = 0.0
    stored_at: float = 0.0
    part: int = 0
    # rungs not encoded by this job (backpressure; for a heal job: the ones not healed)
    skip: tuple[str, ...] = ()
    renditions: tuple[str, ...] = ()
    heal: bool = False
    part_target: float = 0.0  # seconds; 0 = a whole-segment job


@message
class TranscodeLag(Message):
    """How far transcoding lags behind a broadcast, and which top rungs new segments skip.

    Published (core, not stored) on ``event.transcode.<stream>`` with every new
    transcode job — ``changed`` marks the ones where the degradation changed — and
    once more (lag 0, nothing skipped) when the publisher session ends.
    """

    kind: ClassVar[str] = "transcode.lag"
    stream: str
    broadcast: str
    lag_seconds: float  # age of the oldest job not fully transcoded yet
    skipped: tuple[str, ...] = ()  # the rungs new segments skip, top first
    at: float = 0.0  # wall clock
    degraded_segments: int = 0  # segments of this publisher session that skipped rungs
    changed: bool = False  # the skipped rungs differ from the previous job's
    part: int = 0


@message
class PlaylistUpdated(Message):
    """A live media playlist was written (the packager, after each write), on the
    non-durable ``playlist.<stream>``: origins answer blocking playlist requests at
    once instead of at their next store poll. Losing one costs a poll interval."""

    kind: ClassVar[str] = "playlist.updated"
    stream: str
    rendition: str
    msn: int  # media sequence number of the last segment listed; -1 for none
    part: int  # index of the last part listed after it (the segment in progress); -1 for none
    ended: bool
    at: float  # wall clock


@message
class JobFailed(Message):
    """A job that failed ``attempts`` times and went to the dead-letter queue."""

    kind: ClassVar[str] = "transcode.failed"
    job: dict[str, object]
    attempts: int
    error: str
    failed_at: float


@message
class ChatEvent(Message):
    """A chat room event fanned out to every node's connections."""

    kind: ClassVar[str] = "chat.event"
    stream: str
    node: str
    event: dict[str, object]


@message
class DeadLetter(Message):
    """A bus message no consumer could take (undecodable, or its handler raised),
    copied to ``dead.<subject>``: logged, counted, and never redelivered."""

    kind: ClassVar[str] = "bus.dead"
    subject: str
    reason: str
    consumer: str
    payload: str  # base64 of the message bytes as they were on the bus
    size: int
    at: float  # wall clock

    @staticmethod
    def of(subject: str, data: bytes, reason: str, consumer: str, at: float) -> DeadLetter:
        return DeadLetter(subject, reason[:2000], consumer, base64.b64encode(data).decode(), len(data), at)

    def data(self) -> bytes:
        return base64.b64decode(self.payload)


# --------------------------------------------------------------- worker protocol
# Not bus messages: the coordinator and its worker processes talk in JSON lines.


@dataclass(frozen=True, slots=True)
class RenditionOutput:
    """One rendition of one segment, as a transcode job stored it."""

    rendition: str
    init_key: str
    segment_key: str
    size: int
    codecs: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class WorkerPart:
    """A worker process's note, before its reply, that it stored one part."""

    rendition: str
    index: int
    start: float
    duration: float
    key: str
    init_key: str
    size: int
    independent: bool
    final: bool

    def to_json(self) -> str:
        return json.dumps({"part": dataclasses.asdict(self)}, separators=(",", ":"))

    @staticmethod
    def from_line(line: bytes | str) -> WorkerPart | None:
        """The part a worker's line announces; None for a line that is no part note."""
        try:
            raw = json.loads(line)
        except ValueError:
            return None
        if not isinstance(raw, dict) or not isinstance(raw.get("part"), dict):
            return None
        p = raw["part"]
        try:
            out = WorkerPart(**{f.name: p[f.name] for f in dataclasses.fields(WorkerPart)})
        except (KeyError, TypeError) as exc:
            raise MessageError(f"bad part note: {exc!r}") from None
        types = {"index": int, "size": int, "start": float, "duration": float,
                 "independent": bool, "final": bool}  # fmt: skip
        for f in dataclasses.fields(WorkerPart):
            want = types.get(f.name, str)
            value = getattr(out, f.name)
            ok = isinstance(value, int | float) and not isinstance(value, bool) if want is float else (
                isinstance(value, want) and (want is bool or not isinstance(value, bool)))
            if not ok:
                raise MessageError(f"bad part note: {f.name} = {value!r}")
        return out


@dataclass(frozen=True, slots=True)
class WorkerReply:
    """A worker process's answer to one job."""

    ok: bool
    outputs: tuple[RenditionOutput, ...] = ()
    error: str = ""
    permanent: bool = False  # retrying cannot help (a bad request)
    reused: bool = False  # a redelivered job: the outputs were already stored, nothing encoded
    duplicate: bool = False  # encoded, but another attempt had stored the outputs meanwhile
    # what a streaming job learnt of its segment once complete (0: the job's own values)
    start: float = 0.0
    duration: float = 0.0
    frame_rate: float = 0.0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @staticmethod
    def from_json(line: bytes | str) -> WorkerReply:
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict):
                raise TypeError("not an object")
            outputs = tuple(
                RenditionOutput(**{f.name: o[f.name] for f in dataclasses.fields(RenditionOutput)})
                for o in raw.get("outputs", ())
            )
            return WorkerReply(
                ok=bool(raw["ok"]), outputs=outputs, error=str(raw.get("error", "")),
                permanent=bool(raw.get("permanent", False)), reused=bool(raw.get("reused", False)),
                duplicate=bool(raw.get("duplicate", False)), start=float(raw.get("start", 0.0)),
                duration=float(raw.get("duration", 0.0)),
                frame_rate=float(raw.get("frame_rate", 0.0)),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            raise MessageError(f"bad worker reply: {exc}") from None
