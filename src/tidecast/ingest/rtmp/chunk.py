"""The RTMP chunk stream: reassembling incoming messages and fragmenting outgoing ones.

This module owns the chunk layer of RTMP (spec section 5.3) and the hard
resource limits of a connection (:class:`Limits`):

* :class:`ChunkReader` parses basic headers (1, 2 and 3 bytes; chunk stream ids
  2..65599), the four message header formats (0: full, 1: no stream id,
  2: timestamp delta only, 3: nothing), extended timestamps (also on format-3
  chunks when the chunk stream's previous header carried one), timestamp
  deltas, and reassembles messages across interleaved chunk streams. It applies
  the two messages that change chunk parsing itself: Set Chunk Size (type 1)
  and Abort (type 2, drops a partially received message). Those messages are
  still returned, after being applied.
* :class:`ChunkWriter` fragments outgoing messages by its current chunk size:
  a format-0 header, then format-3 continuation chunks, with extended
  timestamps where needed.

Memory is bounded: the reader keeps at most one partial chunk header
(:data:`MAX_CHUNK_HEADER_SIZE` bytes) as input buffer -- chunk bodies go
straight into reassembly buffers -- and the reassembly buffers of all chunk
streams together never exceed ``Limits.max_message_size``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from tidecast.ingest import ProtocolError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_HEADER_SIZE",
    "RTMP_MAX_CHUNK_SIZE",
    "ChunkError",
    "ChunkReader",
    "ChunkWriter",
    "Limits",
    "Message",
    "MessageType",
    "encode_basic_header",
]

DEFAULT_CHUNK_SIZE: Final = 128
"""Chunk size in both directions until a Set Chunk Size message changes it."""

RTMP_MAX_CHUNK_SIZE: Final = 0x7FFFFFFF
"""The largest chunk size the RTMP specification allows (31 bits)."""

MAX_CHUNK_HEADER_SIZE: Final = 3 + 11 + 4
"""Basic header (3) + format-0 message header (11) + extended timestamp (4)."""

MIN_CSID: Final = 2
MAX_CSID: Final = 65599

_TS_MASK: Final = 0xFFFFFFFF
_EXTENDED: Final = 0xFFFFFF
_MESSAGE_HEADER_SIZE: Final = (11, 7, 3, 0)


class MessageType(enum.IntEnum):
    SET_CHUNK_SIZE = 1
    ABORT = 2
    ACKNOWLEDGEMENT = 3
    USER_CONTROL = 4
    WINDOW_ACK_SIZE = 5
    SET_PEER_BANDWIDTH = 6
    AUDIO = 8
    VIDEO = 9
    DATA_AMF3 = 15
    SHARED_OBJECT_AMF3 = 16
    COMMAND_AMF3 = 17
    DATA_AMF0 = 18
    SHARED_OBJECT_AMF0 = 19
    COMMAND_AMF0 = 20
    AGGREGATE = 22


class ChunkError(ProtocolError):
    """Malformed chunk stream or a chunk-layer limit exceeded."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Hard per-connection resource limits (defaults suit OBS and ffmpeg publishers)."""

    max_chunk_size: int = 65536
    """Largest chunk size the peer may set (the spec allows up to 2**31 - 1)."""
    max_message_size: int = 16 * 1024 * 1024
    """Largest message; also the cap on all partially reassembled messages together."""
    max_chunk_streams: int = 64
    """Distinct chunk stream ids one connection may use."""
    max_message_streams: int = 16
    """Message streams one connection may create with ``createStream``."""
    max_pending_messages: int = 1024
    """Messages held while the application decides on a connect or publish request."""
    max_pending_bytes: int = 4 * 1024 * 1024
    """Payload bytes held while the application decides on a connect or publish request."""
    max_amf_depth: int = 32
    """Nesting depth of AMF values in commands and metadata."""
    max_amf_values: int = 65536
    """Number of AMF values in one command or data message."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_chunk_size <= RTMP_MAX_CHUNK_SIZE:
            raise ValueError(f"max_chunk_size must be 1..{RTMP_MAX_CHUNK_SIZE}")
        if not 0 <= self.max_chunk_streams <= MAX_CSID - MIN_CSID + 1:
            raise ValueError("max_chunk_streams out of range")
        for name in (
            "max_message_size",
            "max_message_streams",
            "max_pending_messages",
            "max_pending_bytes",
            "max_amf_depth",
            "max_amf_values",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True, slots=True)
class Message:
    """One reassembled RTMP message. ``timestamp`` is the raw 32-bit value."""

    type_id: int
    stream_id: int
    timestamp: int
    payload: bytes
    csid: int = 3


class _ChunkStream:
    """Per-chunk-stream state: the previous header and a partial message, if any."""

    __slots__ = (
        "csid",
        "timestamp",
        "ts_field",
        "extended",
        "length",
        "type_id",
        "stream_id",
        "buf",
        "remaining",
    )

    def __init__(self, csid: int) -> None:
        self.csid = csid
        self.timestamp = 0  # absolute 32-bit timestamp of the current/last message
        self.ts_field = 0  # last timestamp field: absolute (format 0) or delta (1, 2)
        self.extended = False  # last header carried an extended timestamp
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.buf = bytearray()
        self.remaining = 0  # body bytes still expected for the current message


def _basic_size(first: int) -> int:
    """Length of the basic header that starts with byte ``first``."""
    low = first & 0x3F
    return 2 if low == 0 else 3 if low == 1 else 1


def encode_basic_header(fmt: int, csid: int) -> bytes:
    """The 1-, 2- or 3-byte basic header for ``fmt`` (0..3) and chunk stream ``csid``."""
    if not 0 <= fmt <= 3:
        raise ValueError(f"invalid chunk header format {fmt}")
    if not MIN_CSID <= csid <= MAX_CSID:
        raise ValueError(f"chunk stream id {csid} outside {MIN_CSID}..{MAX_CSID}")
    if csid < 64:
        return bytes([fmt << 6 | csid])
    if csid < 320:
        return bytes([fmt << 6, csid - 64])
    rest = csid - 64
    return bytes([fmt << 6 | 1, rest & 0xFF, rest >> 8])


class ChunkReader:
    """Incremental chunk-stream parser: :meth:`feed` bytes, get complete messages back."""

    def __init__(self, limits: Limits | None = None) -> None:
        self._limits = limits if limits is not None else Limits()
        self._chunk_size = DEFAULT_CHUNK_SIZE
        self._streams: dict[int, _ChunkStream] = {}
        self._header = bytearray()  # partial chunk header: the only input buffer
        self._current: _ChunkStream | None = None  # stream whose chunk body is being read
        self._chunk_left = 0  # body bytes left in the current chunk
        self._reassembly_bytes = 0  # sum of len(stream.buf) over all chunk streams

    @property
    def chunk_size(self) -> int:
        """The peer's current chunk size."""
        return self._chunk_size

    @property
    def buffered_bytes(self) -> int:
        """Partial header bytes plus all partially reassembled message bytes."""
        return len(self._header) + self._reassembly_bytes

    def feed(self, data: bytes) -> list[Message]:
        """Parse ``data``; return the messages it completes, in order of completion.

        Raises :class:`ChunkError` on malformed input or exceeded limits.
        """
        out: list[Message] = []
        view = memoryview(data)
        pos = 0
        end = len(view)
        while pos < end:
            current = self._current
            if current is None:
                pos = self._read_header(view, pos, out)
                continue
            take = min(self._chunk_left, end - pos)
            if self._reassembly_bytes + take > self._limits.max_message_size:
                raise ChunkError(
                    "partially received messages exceed "
                    f"{self._limits.max_message_size} bytes in total"
                )
            current.buf += view[pos : pos + take]
            self._reassembly_bytes += take
            current.remaining -= take
            self._chunk_left -= take
            pos += take
            if self._chunk_left == 0:
                self._end_chunk(current, out)
        return out

    # ------------------------------------------------------------------ headers

    def _header_size(self) -> int:
        """Bytes needed for the header being read, as far as the bytes so far tell."""
        h = self._header
        if not h:
            return 1
        fmt = h[0] >> 6
        basic = _basic_size(h[0])
        if len(h) < basic:
            return basic
        size = basic + _MESSAGE_HEADER_SIZE[fmt]
        if len(h) < size:
            return size
        if fmt < 3:
            extended = int.from_bytes(h[basic : basic + 3], "big") == _EXTENDED
        else:
            stream = self._streams.get(self._csid(basic))
            extended = stream is not None and stream.extended
        return size + 4 if extended else size

    def _csid(self, basic: int) -> int:
        h = self._header
        if basic == 1:
            return h[0] & 0x3F
        if basic == 2:
            return 64 + h[1]
        return 64 + h[1] + (h[2] << 8)

    def _read_header(self, view: memoryview, pos: int, out: list[Message]) -> int:
        end = len(view)
        while True:
            have = len(self._header)
            need = self._header_size()
            if have >= need:
                break
            if pos >= end:
                return pos
            take = min(need - have, end - pos)
            self._header += view[pos : pos + take]
            pos += take
            basic = _basic_size(self._header[0])
            if have < basic <= len(self._header):
                self._check_stream_start(basic)
        self._parse_header(out)
        return pos

    def _check_stream_start(self, basic: int) -> None:
        """Reject a first chunk without a format-0 header as soon as the basic header is in."""
        fmt = self._header[0] >> 6
        csid = self._csid(basic)
        if fmt != 0 and csid not in self._streams:
            raise ChunkError(
                f"chunk stream {csid}: first chunk has header format {fmt} "
                "without a previous format-0 header"
            )

    def _parse_header(self, out: list[Message]) -> None:
        h = self._header
        fmt = h[0] >> 6
        basic = _basic_size(h[0])
        csid = self._csid(basic)
        stream = self._streams.get(csid)
        if stream is None:
            if fmt != 0:
                raise ChunkError(
                    f"chunk stream {csid}: first chunk has header format {fmt} "
                    "without a previous format-0 header"
                )
            if len(self._streams) >= self._limits.max_chunk_streams:
                raise ChunkError(f"too many chunk streams (limit {self._limits.max_chunk_streams})")
            stream = _ChunkStream(csid)
            self._streams[csid] = stream
        p = basic
        if fmt == 3:
            if stream.remaining == 0:  # a new message reusing the previous header
                ts_field = stream.ts_field
                if stream.extended:
                    ts_field = int.from_bytes(h[p : p + 4], "big")
                stream.timestamp = (stream.timestamp + ts_field) & _TS_MASK
                self._start_message(stream, out)
            else:
                self._start_chunk(stream)
            self._header.clear()
            return
        if stream.remaining:
            raise ChunkError(
                f"chunk stream {csid}: new message header (format {fmt}) before the "
                f"previous message was complete ({stream.remaining} bytes missing)"
            )
        ts_field = int.from_bytes(h[p : p + 3], "big")
        p += 3
        if fmt <= 1:
            stream.length = int.from_bytes(h[p : p + 3], "big")
            stream.type_id = h[p + 3]
            p += 4
        if fmt == 0:
            stream.stream_id = int.from_bytes(h[p : p + 4], "little")
            p += 4
        stream.extended = ts_field == _EXTENDED
        if stream.extended:
            ts_field = int.from_bytes(h[p : p + 4], "big")
        stream.ts_field = ts_field
        if fmt == 0:
            stream.timestamp = ts_field
        else:
            stream.timestamp = (stream.timestamp + ts_field) & _TS_MASK
        self._header.clear()
        self._start_message(stream, out)

    def _start_message(self, stream: _ChunkStream, out: list[Message]) -> None:
        if stream.length > self._limits.max_message_size:
            raise ChunkError(
                f"chunk stream {stream.csid}: message length {stream.length} exceeds "
                f"limit {self._limits.max_message_size}"
            )
        stream.remaining = stream.length
        stream.buf = bytearray()
        if stream.length == 0:
            self._complete(stream, out)
            return
        self._start_chunk(stream)

    def _start_chunk(self, stream: _ChunkStream) -> None:
        self._current = stream
        self._chunk_left = min(self._chunk_size, stream.remaining)

    def _end_chunk(self, stream: _ChunkStream, out: list[Message]) -> None:
        self._current = None
        self._header.clear()
        if stream.remaining == 0:
            self._complete(stream, out)

    # ----------------------------------------------------------------- messages

    def _complete(self, stream: _ChunkStream, out: list[Message]) -> None:
        payload = bytes(stream.buf)
        self._reassembly_bytes -= len(stream.buf)
        stream.buf = bytearray()
        message = Message(
            type_id=stream.type_id,
            stream_id=stream.stream_id,
            timestamp=stream.timestamp,
            payload=payload,
            csid=stream.csid,
        )
        if message.type_id == MessageType.SET_CHUNK_SIZE:
            self._set_chunk_size(payload)
        elif message.type_id == MessageType.ABORT:
            self._abort(payload)
        out.append(message)

    def _set_chunk_size(self, payload: bytes) -> None:
        if len(payload) < 4:
            raise ChunkError(f"truncated Set Chunk Size message ({len(payload)} bytes)")
        size = int.from_bytes(payload[:4], "big")
        if size == 0:
            raise ChunkError("invalid chunk size 0")
        if size > self._limits.max_chunk_size:
            raise ChunkError(f"chunk size {size} exceeds limit {self._limits.max_chunk_size}")
        self._chunk_size = size

    def _abort(self, payload: bytes) -> None:
        if len(payload) < 4:
            raise ChunkError(f"truncated Abort message ({len(payload)} bytes)")
        stream = self._streams.get(int.from_bytes(payload[:4], "big"))
        if stream is not None and stream.remaining:
            self._reassembly_bytes -= len(stream.buf)
            stream.buf = bytearray()
            stream.remaining = 0


class ChunkWriter:
    """Fragments outgoing messages: a format-0 header, then format-3 continuations."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if not 1 <= chunk_size <= RTMP_MAX_CHUNK_SIZE:
            raise ValueError(f"invalid chunk size {chunk_size}")
        self._chunk_size = chunk_size

    @property
    def chunk_size(self) -> int:
        return self._chunk_size

    def set_chunk_size(self, size: int) -> bytes:
        """Encode a Set Chunk Size message, then use ``size`` for later messages."""
        if not 1 <= size <= RTMP_MAX_CHUNK_SIZE:
            raise ValueError(f"invalid chunk size {size}")
        data = self.write(2, MessageType.SET_CHUNK_SIZE, 0, 0, size.to_bytes(4, "big"))
        self._chunk_size = size
        return data

    def write(
        self, csid: int, type_id: int, stream_id: int, timestamp: int, payload: bytes
    ) -> bytes:
        """Encode one message as chunks on chunk stream ``csid``."""
        if len(payload) > 0xFFFFFF:
            raise ValueError(f"message too long for RTMP ({len(payload)} bytes)")
        if not 0 <= type_id <= 0xFF:
            raise ValueError(f"invalid message type {type_id}")
        if not 0 <= stream_id <= 0xFFFFFFFF:
            raise ValueError(f"invalid message stream id {stream_id}")
        timestamp &= _TS_MASK
        extended = timestamp >= _EXTENDED
        ext = timestamp.to_bytes(4, "big") if extended else b""
        out = bytearray(encode_basic_header(0, csid))
        out += (_EXTENDED if extended else timestamp).to_bytes(3, "big")
        out += len(payload).to_bytes(3, "big")
        out.append(type_id)
        out += stream_id.to_bytes(4, "little")
        out += ext
        continuation = encode_basic_header(3, csid) + ext
        size = self._chunk_size
        view = memoryview(payload)
        out += view[:size]
        for start in range(size, len(payload), size):
            out += continuation
            out += view[start : start + size]
        return bytes(out)
