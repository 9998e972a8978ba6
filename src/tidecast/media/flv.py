"""A sans-I/O reader of an FLV *stream* (the container: header and tags), for H.264.

``tidecast.ingest.rtmp.flv`` parses tag payloads as RTMP carries them; this reads
a whole FLV byte stream as ffmpeg writes it to a pipe (the transcoder's encoder
output, see ``ffmpeg.transcode_stream_args``): feed it bytes as they come, get
the AVC decoder configuration and every encoded frame (AVCC, length-prefixed
NAL units) with its timestamps, the moment its tag is complete.
"""

from __future__ import annotations

from dataclasses import dataclass

from tidecast.media.errors import MediaError

__all__ = ["AvcConfig", "AvcFrame", "FlvReader"]

_HEADER = 9
_TAG_HEADER = 11
_VIDEO = 9
_CODEC_AVC = 7
MAX_TAG = 64 << 20  # bytes: one encoded picture is far smaller


@dataclass(frozen=True, slots=True)
class AvcConfig:
    """The AVC sequence header: an AVCDecoderConfigurationRecord."""

    avcc: bytes


@dataclass(frozen=True, slots=True)
class AvcFrame:
    """One encoded picture: decode and presentation time in milliseconds."""

    dts: int
    pts: int
    keyframe: bool
    data: bytes


class FlvReader:
    """``feed(bytes)`` -> the video events the bytes complete (other tags are skipped)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._header_done = False
        self.ended = False

    def feed(self, data: bytes) -> list[AvcConfig | AvcFrame]:
        self._buf += data
        out: list[AvcConfig | AvcFrame] = []
        if not self._header_done:
            if len(self._buf) < _HEADER + 4:
                return out
            if bytes(self._buf[:3]) != b"FLV":
                raise MediaError(f"not an FLV stream: starts with {bytes(self._buf[:3])!r}")
            offset = int.from_bytes(self._buf[5:9], "big")
            if offset < _HEADER or offset > 1024:
                raise MediaError(f"bad FLV header size {offset}")
            if len(self._buf) < offset + 4:
                return out
            del self._buf[: offset + 4]  # header and PreviousTagSize0
            self._header_done = True
        while len(self._buf) >= _TAG_HEADER:
            tag_type = self._buf[0] & 0x1F
            size = int.from_bytes(self._buf[1:4], "big")
            if size > MAX_TAG:
                raise MediaError(f"FLV tag of {size} bytes")
            if len(self._buf) < _TAG_HEADER + size + 4:
                break
            ts = int.from_bytes(self._buf[4:7], "big") | (self._buf[7] << 24)
            body = bytes(self._buf[_TAG_HEADER : _TAG_HEADER + size])
            del self._buf[: _TAG_HEADER + size + 4]
            if tag_type == _VIDEO:
                event = _video(ts, body)
                if event is not None:
                    out.append(event)
        return out

    def end(self) -> None:
        """The stream ended; MediaError if it stopped inside a tag."""
        self.ended = True
        if self._buf:
            raise MediaError(f"FLV stream ended inside a tag ({len(self._buf)} bytes left)")


def _video(ts: int, body: bytes) -> AvcConfig | AvcFrame | None:
    if len(body) < 5:
        return None
    frame_type, codec = body[0] >> 4, body[0] & 0x0F
    if codec != _CODEC_AVC or frame_type == 5:
        return None
    packet_type = body[1]
    if packet_type == 0:
        return AvcConfig(body[5:])
    if packet_type != 1:
        return None  # end of sequence
    cts = int.from_bytes(body[2:5], "big")
    if cts & 0x800000:
        cts -= 0x1000000
    return AvcFrame(ts, ts + cts, frame_type == 1, body[5:])
