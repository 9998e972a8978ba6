"""Typed messages that stages exchange over the bus.

Small, frozen, JSON-serialisable records: which stream, which broadcast, which
sequence number, media time, wall-clock stamps, and keys of stored objects —
never media bytes. ``encode``/``decode`` are the wire format every bus uses.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar, dataclass_transform


class MessageError(ValueError):
    """Bytes on the bus that are not a known message."""


_REGISTRY: dict[str, type[Message]] = {}
M = TypeVar("M", bound="Message")


@dataclass(frozen=True, slots=True)
class Message:
    kind: ClassVar[str] = ""


@dataclass_transform(frozen_default=True)
def message(cls: type[M]) -> type[M]:
    """Class decorator: a frozen dataclass registered under its ``kind``."""
    out = dataclass(frozen=True, slots=True)(cls)
    _REGISTRY[out.kind] = out
    return out


def encode(msg: Message) -> bytes:
    body = dataclasses.asdict(msg)
    return json.dumps({"kind": msg.kind, "body": body}, separators=(",", ":")).encode()


def decode(data: bytes) -> Message:
    try:
        raw = json.loads(data)
        cls = _REGISTRY[raw["kind"]]
        body = raw["body"]
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in body:
                value = body[f.name]
                kwargs[f.name] = tuple(value) if isinstance(value, list) else value
                if f.name in ("timings", "job", "event"):
                    kwargs[f.name] = value
        return cls(**kwargs)
    except (ValueError, KeyError, TypeError) as exc:
        raise MessageError(f"undecodable bus message: {exc}") from exc


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


@message
class TranscodeJob(Message):
    """Encode one stored source segment into every rung of the ladder that fits it."""

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
    ladder: tuple[dict[str, object], ...]  # Rung.to_dict() of every configured rung
    preset: str = "veryfast"
    first_frame_arrival: float = 0.0
    stored_at: float = 0.0
    part: int = 0
    # rungs not encoded because transcoding lags (backpressure): announced as gaps
    skip: tuple[str, ...] = ()


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
