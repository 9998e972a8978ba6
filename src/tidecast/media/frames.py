"""Typed media frames: what ingest hands to the segmenter.

Timestamps are integers in milliseconds on the publisher's clock (the RTMP /
FLV timebase). ``dts`` is the decode time, ``pts`` the presentation time
(``pts = dts + composition offset`` for video; equal for audio).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class TrackKind(enum.Enum):
    VIDEO = "video"
    AUDIO = "audio"


@dataclass(frozen=True, slots=True)
class VideoConfig:
    """H.264 decoder configuration from the AVC sequence header."""

    avcc: bytes  # AVCDecoderConfigurationRecord (ISO/IEC 14496-15), as carried in FLV
    width: int
    height: int
    codec: str  # RFC 6381 string, e.g. "avc1.64001f"


@dataclass(frozen=True, slots=True)
class AudioConfig:
    """AAC decoder configuration from the AAC sequence header."""

    asc: bytes  # AudioSpecificConfig (ISO/IEC 14496-3)
    sample_rate: int
    channels: int
    codec: str  # RFC 6381 string, e.g. "mp4a.40.2"
    samples_per_frame: int = 1024


@dataclass(frozen=True, slots=True)
class MediaFrame:
    """One access unit: an H.264 picture (AVCC length-prefixed NALUs) or one raw AAC frame."""

    kind: TrackKind
    dts: int  # milliseconds
    pts: int  # milliseconds
    data: bytes
    keyframe: bool = False
    arrival: float = field(default=0.0, compare=False)  # wall clock (time.time()) at ingest
