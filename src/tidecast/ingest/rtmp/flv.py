"""FLV audio and video tag *payloads*, as carried by RTMP audio (8) and video (9) messages.

This module owns the codec layer of RTMP ingest (not the FLV file container):

* video: frame type + codec id; H.264/AVC (codec id 7) with AVCPacketType
  0 = sequence header (an AVCDecoderConfigurationRecord), 1 = NALUs (AVCC,
  length-prefixed) with a signed 24-bit composition time offset, 2 = end of
  sequence. Video info/command frames (frame type 5) carry no picture.
* audio: sound format 10 (AAC) with AACPacketType 0 = AudioSpecificConfig,
  1 = one raw AAC frame.

Everything else -- legacy codecs, the non-standard HEVC/AV1 codec ids, and any
Enhanced-RTMP tag (IsExHeader bit set, FourCC hvc1/av01/vp09/...) -- raises
:class:`UnsupportedCodec` with a message naming the codec. Truncated or
malformed payloads raise :class:`FLVError`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from tidecast.ingest import ProtocolError

__all__ = [
    "AACPacketType",
    "AVCPacketType",
    "AudioTag",
    "FLVError",
    "UnsupportedCodec",
    "VideoTag",
    "parse_audio_tag",
    "parse_video_tag",
]

CODEC_AVC: Final = 7
SOUND_FORMAT_AAC: Final = 10
FRAME_KEY: Final = 1
FRAME_COMMAND: Final = 5

_VIDEO_CODECS: Final = {
    1: "JPEG",
    2: "Sorenson H.263",
    3: "Screen Video",
    4: "On2 VP6",
    5: "On2 VP6 with alpha",
    6: "Screen Video v2",
    7: "H.264",
    12: "HEVC",
    13: "AV1",
}

_AUDIO_FORMATS: Final = {
    0: "Linear PCM (platform endian)",
    1: "ADPCM",
    2: "MP3",
    3: "Linear PCM (little endian)",
    4: "Nellymoser 16 kHz mono",
    5: "Nellymoser 8 kHz mono",
    6: "Nellymoser",
    7: "G.711 A-law",
    8: "G.711 mu-law",
    10: "AAC",
    11: "Speex",
    14: "MP3 8 kHz",
    15: "device-specific sound",
}

_FOURCC_NAMES: Final = {
    b"avc1": "H.264",
    b"hvc1": "HEVC",
    b"av01": "AV1",
    b"vp08": "VP8",
    b"vp09": "VP9",
    b"vvc1": "VVC",
    b"mp4a": "AAC",
    b"Opus": "Opus",
    b"fLaC": "FLAC",
    b"ac-3": "AC-3",
    b"ec-3": "E-AC-3",
    b".mp3": "MP3",
}

# Enhanced RTMP video packet types whose FourCC is not at bytes 1..4.
_EX_VIDEO_MULTITRACK: Final = 6
_EX_VIDEO_MODEX: Final = 7
_EX_AUDIO_HEADER: Final = 9  # SoundFormat value announcing an enhanced audio header


class FLVError(ProtocolError):
    """A truncated or malformed FLV audio/video tag payload."""


class UnsupportedCodec(ProtocolError):
    """The publisher sent a codec we do not ingest (we take H.264 video and AAC audio)."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name
        wanted = "H.264" if kind == "video" else "AAC"
        if "enhanced RTMP" in name and name.startswith(wanted):
            advice = f"publish {wanted} with legacy (non-enhanced) RTMP"
        else:
            advice = f"publish {wanted}"
        super().__init__(f"{kind} codec {name} is not supported; {advice}")


class AVCPacketType(enum.IntEnum):
    SEQUENCE_HEADER = 0
    NALU = 1
    END_OF_SEQUENCE = 2


class AACPacketType(enum.IntEnum):
    SEQUENCE_HEADER = 0
    RAW = 1


@dataclass(frozen=True, slots=True)
class VideoTag:
    """An H.264 video tag. ``data`` is the AVCDecoderConfigurationRecord or AVCC NALUs."""

    frame_type: int
    packet_type: AVCPacketType
    composition_time: int  # milliseconds, signed
    data: bytes

    @property
    def keyframe(self) -> bool:
        return self.frame_type == FRAME_KEY


@dataclass(frozen=True, slots=True)
class AudioTag:
    """An AAC audio tag. ``data`` is the AudioSpecificConfig or one raw AAC frame."""

    sound_rate: int
    sound_size: int
    sound_type: int
    packet_type: AACPacketType
    data: bytes


def _fourcc_name(fourcc: bytes) -> str:
    name = _FOURCC_NAMES.get(fourcc)
    printable = all(0x20 <= b < 0x7F for b in fourcc)
    text = fourcc.decode("ascii") if printable else "0x" + fourcc.hex()
    if name is None:
        return f"with enhanced RTMP FourCC {text}"
    return f"{name} (enhanced RTMP FourCC {text})"


def _need(payload: bytes, n: int, what: str) -> None:
    if len(payload) < n:
        raise FLVError(f"truncated {what}: {len(payload)} bytes, need at least {n}")


def parse_video_tag(payload: bytes) -> VideoTag | None:
    """Parse a video message payload; ``None`` for info/command frames (no picture).

    Raises :class:`UnsupportedCodec` for anything but legacy H.264 and
    :class:`FLVError` for truncated or malformed payloads.
    """
    _need(payload, 1, "video tag")
    first = payload[0]
    if first & 0x80:  # Enhanced RTMP: IsExHeader
        packet_type = first & 0x0F
        offset = 2 if packet_type == _EX_VIDEO_MULTITRACK else 1
        if packet_type == _EX_VIDEO_MODEX:
            raise UnsupportedCodec("video", "with enhanced RTMP ModEx packets")
        _need(payload, offset + 4, "enhanced RTMP video tag")
        raise UnsupportedCodec("video", _fourcc_name(bytes(payload[offset : offset + 4])))
    frame_type = first >> 4
    codec_id = first & 0x0F
    if frame_type == FRAME_COMMAND:
        return None
    if codec_id != CODEC_AVC:
        name = _VIDEO_CODECS.get(codec_id, "unknown")
        raise UnsupportedCodec("video", f"{name} (FLV codec id {codec_id})")
    if not 1 <= frame_type <= 4:
        raise FLVError(f"invalid video frame type {frame_type}")
    _need(payload, 5, "AVC video tag")
    raw_type = payload[1]
    if raw_type > AVCPacketType.END_OF_SEQUENCE:
        raise FLVError(f"invalid AVCPacketType {raw_type}")
    cts = int.from_bytes(payload[2:5], "big")
    if cts & 0x800000:
        cts -= 0x1000000
    return VideoTag(
        frame_type=frame_type,
        packet_type=AVCPacketType(raw_type),
        composition_time=cts,
        data=bytes(payload[5:]),
    )


def parse_audio_tag(payload: bytes) -> AudioTag:
    """Parse an audio message payload.

    Raises :class:`UnsupportedCodec` for anything but AAC and :class:`FLVError`
    for truncated or malformed payloads.
    """
    _need(payload, 1, "audio tag")
    first = payload[0]
    sound_format = first >> 4
    if sound_format == _EX_AUDIO_HEADER:  # Enhanced RTMP v2 audio
        _need(payload, 5, "enhanced RTMP audio tag")
        raise UnsupportedCodec("audio", _fourcc_name(bytes(payload[1:5])))
    if sound_format != SOUND_FORMAT_AAC:
        name = _AUDIO_FORMATS.get(sound_format, "unknown")
        raise UnsupportedCodec("audio", f"{name} (FLV sound format {sound_format})")
    _need(payload, 2, "AAC audio tag")
    raw_type = payload[1]
    if raw_type > AACPacketType.RAW:
        raise FLVError(f"invalid AACPacketType {raw_type}")
    return AudioTag(
        sound_rate=(first >> 2) & 0x03,
        sound_size=(first >> 1) & 0x01,
        sound_type=first & 0x01,
        packet_type=AACPacketType(raw_type),
        data=bytes(payload[2:]),
    )
