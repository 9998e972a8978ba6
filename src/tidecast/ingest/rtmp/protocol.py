"""The server side of one RTMP connection, sans-I/O: :class:`ServerConnection`.

This module owns the RTMP session logic on top of the handshake
(:mod:`.handshake`), the chunk layer (:mod:`.chunk`), AMF0 (:mod:`.amf0`) and
FLV tag payloads (:mod:`.flv`): the NetConnection/NetStream command flow that
OBS and ffmpeg expect, protocol control and user control messages,
acknowledgements, timestamp unwrapping, and turning publisher media into typed
events. It does no I/O: feed it bytes, read events, send the bytes it returns::

    conn = ServerConnection()
    conn.receive_data(data)           # raises ProtocolError: close the connection
    for event in conn.events(): ...   # ConnectRequest -> accept_connect() etc.
    transport.write(conn.data_to_send())

The application decides on :class:`ConnectRequest` and :class:`PublishRequest`
with ``accept_*``/``reject_*``. While a decision is pending, later commands,
data and media messages are held (bounded by ``Limits.max_pending_*``) and
processed when the decision is made -- so ``accept_*`` and ``reject_*`` may
queue further events (drain :meth:`ServerConnection.events` again after
calling them) and may raise ``ProtocolError`` for a held message, exactly as
``receive_data`` would have. Well-behaved publishers (ffmpeg, OBS) wait for
each reply, so nothing is normally held.

Media timestamps are the RTMP 32-bit millisecond timestamps unwrapped per
message stream into unbounded ints, so streams may run past 49.7 days (and past
the 24.8 days after which ffmpeg, writing signed FLV timestamps, wraps at 2**31).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Any, Final

from tidecast.ingest import ProtocolError
from tidecast.ingest.rtmp import amf0
from tidecast.ingest.rtmp.amf0 import UNDEFINED, as_int, is_number
from tidecast.ingest.rtmp.chunk import (
    MAX_CHUNK_HEADER_SIZE,
    ChunkReader,
    ChunkWriter,
    Limits,
    Message,
    MessageType,
)
from tidecast.ingest.rtmp.flv import (
    AACPacketType,
    AVCPacketType,
    UnsupportedCodec,
    parse_audio_tag,
    parse_video_tag,
)
from tidecast.ingest.rtmp.handshake import HANDSHAKE_SIZE, ServerHandshake

__all__ = [
    "AudioFrame",
    "AudioSequenceHeader",
    "ConnectRequest",
    "EndOfStream",
    "Event",
    "Limits",
    "MediaRejected",
    "MetaData",
    "ProtocolError",
    "PublishRequest",
    "ServerConnection",
    "UnpublishRequest",
    "VideoFrame",
    "VideoSequenceHeader",
    "max_buffered_bytes",
]

WINDOW_ACK_SIZE: Final = 2_500_000
PEER_BANDWIDTH: Final = 2_500_000
PEER_BANDWIDTH_DYNAMIC: Final = 2
OUT_CHUNK_SIZE: Final = 4096
FMS_VERSION: Final = "FMS/3,0,1,123"
CAPABILITIES: Final = 31

# Outgoing chunk streams (as nginx-rtmp and ffmpeg use them).
_CSID_CONTROL: Final = 2
_CSID_COMMAND: Final = 3
_CSID_STREAM: Final = 5

# User control event types.
_UC_STREAM_BEGIN: Final = 0
_UC_PING_REQUEST: Final = 6
_UC_PING_RESPONSE: Final = 7

_TS_MOD: Final = 1 << 32
_TS_HALF: Final = 1 << 31
_TS_QUARTER: Final = 1 << 30

# Messages held back while the application decides on a connect or publish.
_DEFERRED_TYPES: Final = frozenset(
    {
        MessageType.AUDIO,
        MessageType.VIDEO,
        MessageType.DATA_AMF3,
        MessageType.COMMAND_AMF3,
        MessageType.DATA_AMF0,
        MessageType.COMMAND_AMF0,
        MessageType.AGGREGATE,
    }
)

# Commands answered with a plain `_result` (null, undefined) when they carry a transaction id.
_REPLIES_NOT_ANSWERED: Final = frozenset({"_result", "_error", "onStatus", "onBWDone", "close"})


def max_buffered_bytes(limits: Limits) -> int:
    """Upper bound of :attr:`ServerConnection.buffered_bytes` for ``limits``."""
    return (
        HANDSHAKE_SIZE + MAX_CHUNK_HEADER_SIZE + limits.max_message_size + limits.max_pending_bytes
    )


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """The client sent ``connect``; answer with accept_connect() or reject_connect()."""

    app: str
    tc_url: str
    properties: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """The client wants to publish ``name``; answer with accept_publish() or reject_publish()."""

    stream_id: int
    name: str
    publish_type: str


@dataclass(frozen=True, slots=True)
class MetaData:
    """``onMetaData`` (usually via ``@setDataFrame``) on a publishing stream."""

    stream_id: int
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class VideoSequenceHeader:
    """H.264 decoder configuration (AVCDecoderConfigurationRecord)."""

    stream_id: int
    timestamp: int
    avcc: bytes


@dataclass(frozen=True, slots=True)
class VideoFrame:
    """One H.264 access unit as AVCC length-prefixed NALUs; times in milliseconds."""

    stream_id: int
    dts: int
    pts: int
    keyframe: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class AudioSequenceHeader:
    """AAC decoder configuration (AudioSpecificConfig)."""

    stream_id: int
    timestamp: int
    asc: bytes


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """One raw AAC frame; timestamp in milliseconds."""

    stream_id: int
    timestamp: int
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The publisher sent an H.264 end-of-sequence."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class UnpublishRequest:
    """Publishing on ``stream_id`` ended (FCUnpublish, closeStream, deleteStream or EOF)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class MediaRejected:
    """The stream's media was refused (unsupported codec); an onStatus error was queued.

    The application should flush :meth:`ServerConnection.data_to_send` and close.
    """

    stream_id: int
    description: str


Event = (
    ConnectRequest
    | PublishRequest
    | MetaData
    | VideoSequenceHeader
    | VideoFrame
    | AudioSequenceHeader
    | AudioFrame
    | EndOfStream
    | UnpublishRequest
    | MediaRejected
)


# --------------------------------------------------------------------------- state


class _ConnState(enum.Enum):
    AWAIT_CONNECT = "await-connect"
    CONNECT_PENDING = "connect-pending"
    CONNECTED = "connected"


class _StreamState(enum.Enum):
    IDLE = "idle"
    PUBLISH_PENDING = "publish-pending"
    PUBLISHING = "publishing"


class _Stream:
    """A NetStream created with createStream."""

    __slots__ = ("stream_id", "state", "name", "media_rejected", "_last_raw", "_last_ts")

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.state = _StreamState.IDLE
        self.name = ""
        self.media_rejected = False
        self._last_raw: int | None = None
        self._last_ts = 0

    def unwrap(self, raw: int, *, commit: bool = True) -> int:
        """Extend a wrapping timestamp to an unbounded int (the nearest to the previous one).

        RTMP timestamps wrap at 2**32, but ffmpeg's FLV layer writes them as signed
        32-bit values and so wraps at 2**31: while both values are below 2**31,
        whichever modulus gives the smaller step wins (they agree on any step under
        2**30 ms, i.e. 12 days). With ``commit=False`` the state is left alone:
        sequence headers use that, since ffmpeg sends them at time 0 whatever the
        media timestamps are.
        """
        last = self._last_raw
        if last is None:
            unwrapped = raw
        else:
            delta = (raw - last) % _TS_MOD
            if delta >= _TS_HALF:
                delta -= _TS_MOD
            if raw < _TS_HALF and last < _TS_HALF:
                delta31 = (raw - last) % _TS_HALF
                if delta31 >= _TS_QUARTER:
                    delta31 -= _TS_HALF
                if abs(delta31) < abs(delta):
                    delta = delta31
            unwrapped = self._last_ts + delta
        if commit:
            self._last_raw = raw
            self._last_ts = unwrapped
        return unwrapped


def _command_string(values: list[Any], index: int, default: str = "") -> str:
    if index < len(values) and isinstance(values[index], str):
        text: str = values[index]
        return text
    return default


class ServerConnection:
    """The whole server side of one RTMP connection, without I/O."""

    def __init__(self, limits: Limits | None = None) -> None:
        self._limits = limits if limits is not None else Limits()
        self._handshake = ServerHandshake()
        self._reader = ChunkReader(self._limits)
        self._writer = ChunkWriter()
        self._out = bytearray()
        self._events: list[Event] = []
        self._closed = False
        self._bytes_received = 0
        self._ack_window = 0
        self._last_ack = 0
        self._state = _ConnState.AWAIT_CONNECT
        self._connect_txid: float = 0.0
        self._streams: dict[int, _Stream] = {}
        self._next_stream_id = 1
        self._pending: deque[Message] = deque()
        self._pending_bytes = 0
        self._awaiting_publish: _Stream | None = None
        self.dropped_media = 0
        """Audio/video messages dropped: not on an accepted publishing stream, or rejected."""
        self.ignored_messages = 0
        """Messages ignored: unknown types, shared objects, malformed data messages."""

    # ----------------------------------------------------------------- public API

    @property
    def closed(self) -> bool:
        """True after EOF, a ProtocolError or a rejected connect: flush and close."""
        return self._closed

    @property
    def bytes_received(self) -> int:
        return self._bytes_received

    @property
    def buffered_bytes(self) -> int:
        """Bytes held in parser buffers and in the pending-decision queue."""
        return self._handshake.buffered_bytes + self._reader.buffered_bytes + self._pending_bytes

    @property
    def limits(self) -> Limits:
        return self._limits

    def events(self) -> list[Event]:
        """Drain the events parsed so far."""
        events = self._events
        self._events = []
        return events

    def data_to_send(self) -> bytes:
        """Drain the bytes to write to the peer."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means EOF.

        Raises :class:`~tidecast.ingest.ProtocolError` on a protocol violation or an
        exceeded limit; the connection is then :attr:`closed`. Data fed after the
        connection is closed is ignored.
        """
        if self._closed:
            return
        if not data:
            self._on_eof()
            return
        self._bytes_received += len(data)
        try:
            if not self._handshake.complete:
                data = self._handshake.receive_data(data)
                self._out += self._handshake.data_to_send()
                if not data:
                    return
            for message in self._reader.feed(data):
                self._on_message(message)
                if self._closed:
                    return
            self._maybe_acknowledge()
        except ProtocolError:
            self._fail()
            raise

    def accept_connect(self) -> None:
        """Accept the pending connect: window/bandwidth/chunk size, then `_result`.

        Then processes messages held meanwhile (may queue events, may raise ProtocolError).
        """
        if self._closed:
            return
        self._require_connect_pending()
        self._send_control(MessageType.WINDOW_ACK_SIZE, WINDOW_ACK_SIZE.to_bytes(4, "big"))
        self._send_control(
            MessageType.SET_PEER_BANDWIDTH,
            PEER_BANDWIDTH.to_bytes(4, "big") + bytes([PEER_BANDWIDTH_DYNAMIC]),
        )
        self._out += self._writer.set_chunk_size(OUT_CHUNK_SIZE)
        self._send_command(
            0,
            "_result",
            self._connect_txid,
            {"fmsVer": FMS_VERSION, "capabilities": CAPABILITIES},
            {
                "level": "status",
                "code": "NetConnection.Connect.Success",
                "description": "Connection succeeded.",
                "objectEncoding": 0,
            },
        )
        self._state = _ConnState.CONNECTED
        self._run_pending()

    def reject_connect(self, description: str) -> None:
        """Reject the pending connect with `_error` NetConnection.Connect.Rejected; closes."""
        if self._closed:
            return
        self._require_connect_pending()
        self._send_command(
            0,
            "_error",
            self._connect_txid,
            None,
            {
                "level": "error",
                "code": "NetConnection.Connect.Rejected",
                "description": description,
            },
        )
        self._fail()

    def accept_publish(self, stream_id: int) -> None:
        """Accept the pending publish: StreamBegin + onStatus NetStream.Publish.Start.

        Then processes messages held meanwhile (may queue events, may raise ProtocolError).
        """
        if self._closed:
            return
        stream = self._require_publish_pending(stream_id)
        stream.state = _StreamState.PUBLISHING
        self._awaiting_publish = None
        self._send_control(
            MessageType.USER_CONTROL,
            _UC_STREAM_BEGIN.to_bytes(2, "big") + stream_id.to_bytes(4, "big"),
        )
        self._send_status(
            stream_id,
            "status",
            "NetStream.Publish.Start",
            f"{stream.name} is now published",
            details=stream.name,
        )
        self._run_pending()

    def reject_publish(self, stream_id: int, code: str, description: str) -> None:
        """Refuse publishing on ``stream_id`` with an onStatus error (level ``error``).

        Works on a pending publish (e.g. ``NetStream.Publish.BadName``) and also on an
        accepted one (e.g. a bad sequence header): its later media is then dropped and
        no UnpublishRequest follows, since the application ended it itself.
        """
        if self._closed:
            return
        stream = self._streams.get(stream_id)
        if stream is not None and stream.state is _StreamState.PUBLISHING:
            stream.state = _StreamState.IDLE
            self._send_status(stream_id, "error", code, description)
            return
        stream = self._require_publish_pending(stream_id)
        stream.state = _StreamState.IDLE
        self._awaiting_publish = None
        self._send_status(stream_id, "error", code, description)
        self._run_pending()

    # ------------------------------------------------------------- decision helpers

    def _require_connect_pending(self) -> None:
        if self._state is not _ConnState.CONNECT_PENDING:
            raise RuntimeError("no connect request is pending")

    def _require_publish_pending(self, stream_id: int) -> _Stream:
        stream = self._awaiting_publish
        if stream is None or stream.stream_id != stream_id:
            raise RuntimeError(f"no publish request is pending on stream {stream_id}")
        return stream

    def _awaiting_decision(self) -> bool:
        return self._state is _ConnState.CONNECT_PENDING or self._awaiting_publish is not None

    def _run_pending(self) -> None:
        """Process messages held during the decision, up to the next decision point."""
        try:
            while self._pending and not self._awaiting_decision() and not self._closed:
                message = self._pending.popleft()
                self._pending_bytes -= len(message.payload)
                self._handle(message)
        except ProtocolError:
            self._fail()
            raise

    def _fail(self) -> None:
        self._closed = True
        self._pending.clear()
        self._pending_bytes = 0

    # ------------------------------------------------------------------- sending

    def _send(self, csid: int, type_id: int, stream_id: int, payload: bytes) -> None:
        self._out += self._writer.write(csid, type_id, stream_id, 0, payload)

    def _send_control(self, type_id: int, payload: bytes) -> None:
        self._send(_CSID_CONTROL, type_id, 0, payload)

    def _send_command(self, stream_id: int, *values: object) -> None:
        csid = _CSID_COMMAND if stream_id == 0 else _CSID_STREAM
        self._send(csid, MessageType.COMMAND_AMF0, stream_id, amf0.encode(*values))

    def _send_status(
        self, stream_id: int, level: str, code: str, description: str, **extra: object
    ) -> None:
        info: dict[str, object] = {"level": level, "code": code, "description": description}
        info.update(extra)
        self._send_command(stream_id, "onStatus", 0, None, info)

    def _maybe_acknowledge(self) -> None:
        if self._ack_window and self._bytes_received - self._last_ack >= self._ack_window:
            self._last_ack = self._bytes_received
            sequence = self._bytes_received & 0xFFFFFFFF
            self._send_control(MessageType.ACKNOWLEDGEMENT, sequence.to_bytes(4, "big"))

    # ------------------------------------------------------------------ receiving

    def _on_eof(self) -> None:
        self._fail()
        for stream in self._streams.values():
            if stream.state is _StreamState.PUBLISHING:
                stream.state = _StreamState.IDLE
                self._events.append(UnpublishRequest(stream.stream_id))

    def _on_message(self, message: Message) -> None:
        type_id = message.type_id
        if type_id in (MessageType.SET_CHUNK_SIZE, MessageType.ABORT):
            return  # already applied by the chunk reader
        if type_id in (MessageType.ACKNOWLEDGEMENT, MessageType.SET_PEER_BANDWIDTH):
            return  # we do not limit our (tiny) output by the peer's window
        if type_id == MessageType.WINDOW_ACK_SIZE:
            self._on_window_ack_size(message.payload)
            return
        if type_id == MessageType.USER_CONTROL:
            self._on_user_control(message.payload)
            return
        if type_id in _DEFERRED_TYPES and self._awaiting_decision():
            self._defer(message)
            return
        self._handle(message)

    def _defer(self, message: Message) -> None:
        size = len(message.payload)
        if (
            len(self._pending) >= self._limits.max_pending_messages
            or self._pending_bytes + size > self._limits.max_pending_bytes
        ):
            raise ProtocolError(
                "too much data sent while a connect/publish request was awaiting a decision "
                f"(limits: {self._limits.max_pending_messages} messages, "
                f"{self._limits.max_pending_bytes} bytes)"
            )
        self._pending.append(message)
        self._pending_bytes += size

    def _on_window_ack_size(self, payload: bytes) -> None:
        if len(payload) < 4:
            raise ProtocolError(f"truncated Window Acknowledgement Size ({len(payload)} bytes)")
        self._ack_window = int.from_bytes(payload[:4], "big")

    def _on_user_control(self, payload: bytes) -> None:
        if len(payload) < 2:
            raise ProtocolError(f"truncated User Control message ({len(payload)} bytes)")
        event = int.from_bytes(payload[:2], "big")
        if event == _UC_PING_REQUEST:
            if len(payload) < 6:
                raise ProtocolError("truncated PingRequest user control message")
            self._send_control(
                MessageType.USER_CONTROL, _UC_PING_RESPONSE.to_bytes(2, "big") + payload[2:6]
            )
        # SetBufferLength, PingResponse and the rest need no action from a server.

    def _handle(self, message: Message) -> None:
        type_id = message.type_id
        if type_id in (MessageType.COMMAND_AMF0, MessageType.COMMAND_AMF3):
            self._on_command(message)
        elif type_id in (MessageType.DATA_AMF0, MessageType.DATA_AMF3):
            self._on_data(message)
        elif type_id == MessageType.VIDEO:
            self._on_video(message.stream_id, message.timestamp, message.payload)
        elif type_id == MessageType.AUDIO:
            self._on_audio(message.stream_id, message.timestamp, message.payload)
        elif type_id == MessageType.AGGREGATE:
            self._on_aggregate(message)
        else:
            self.ignored_messages += 1

    def _decode(self, message: Message) -> list[Any]:
        payload = message.payload
        if message.type_id in (MessageType.COMMAND_AMF3, MessageType.DATA_AMF3):
            if not payload:
                raise amf0.AMF0DecodeError("empty AMF3 message")
            payload = payload[1:]  # format selector byte; the body is AMF0
        return amf0.decode_all(
            payload,
            max_depth=self._limits.max_amf_depth,
            max_values=self._limits.max_amf_values,
        )

    # ------------------------------------------------------------------- commands

    def _on_command(self, message: Message) -> None:
        values = self._decode(message)
        if not values or not isinstance(values[0], str):
            raise ProtocolError("command message does not start with a command name")
        name: str = values[0]
        txid: float = 0.0
        if len(values) > 1 and is_number(values[1]):
            txid = float(values[1])
        args = values[2:]  # command object (usually null), then the arguments

        if self._state is _ConnState.AWAIT_CONNECT:
            if name != "connect":
                raise ProtocolError(f"command {name!r} received before connect")
            self._on_connect(txid, args)
            return
        if name == "connect":
            raise ProtocolError("duplicate connect command")

        stream_id = message.stream_id
        if name == "releaseStream":
            self._reply_result(txid)
        elif name == "FCPublish":
            self._reply_result(txid)
            self._send_command(
                0,
                "onFCPublish",
                0,
                None,
                {
                    "level": "status",
                    "code": "NetStream.Publish.Start",
                    "description": _command_string(args, 1),
                },
            )
        elif name == "createStream":
            self._on_create_stream(txid)
        elif name == "publish":
            self._on_publish(stream_id, args)
        elif name == "FCUnpublish":
            self._on_fc_unpublish(txid, _command_string(args, 1))
        elif name == "closeStream":
            stream = self._streams.get(stream_id)
            if stream is not None:
                self._unpublish(stream)
        elif name == "deleteStream":
            target = as_int(args[1]) if len(args) > 1 else None
            stream = self._streams.pop(target, None) if target is not None else None
            if stream is not None:
                self._unpublish(stream)
        elif name == "getStreamLength":
            if txid != 0:  # a live stream has no length; ffmpeg wants a number
                self._send_command(0, "_result", txid, None, 0)
        elif name in ("play", "play2"):
            self._send_status(
                stream_id,
                "error",
                "NetStream.Play.Failed",
                "playback over RTMP is not supported by this server",
            )
        elif name not in _REPLIES_NOT_ANSWERED:
            # checkBandwidth, _checkbw and anything unknown.
            self._reply_result(txid)

    def _reply_result(self, txid: float) -> None:
        if txid != 0:
            self._send_command(0, "_result", txid, None, UNDEFINED)

    def _on_connect(self, txid: float, args: list[Any]) -> None:
        properties: dict[str, Any] = dict(args[0]) if args and isinstance(args[0], dict) else {}
        app = properties.get("app")
        tc_url = properties.get("tcUrl")
        self._connect_txid = txid
        self._state = _ConnState.CONNECT_PENDING
        self._events.append(
            ConnectRequest(
                app=app if isinstance(app, str) else "",
                tc_url=tc_url if isinstance(tc_url, str) else "",
                properties=properties,
            )
        )

    def _on_create_stream(self, txid: float) -> None:
        if len(self._streams) >= self._limits.max_message_streams:
            raise ProtocolError(
                f"too many streams created (limit {self._limits.max_message_streams})"
            )
        stream_id = self._next_stream_id
        if stream_id > 0x7FFFFFFF:
            raise ProtocolError("message stream ids exhausted")
        self._next_stream_id += 1
        self._streams[stream_id] = _Stream(stream_id)
        self._send_command(0, "_result", txid, None, stream_id)

    def _on_publish(self, stream_id: int, args: list[Any]) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise ProtocolError(
                f"publish on message stream {stream_id}, which was not created with createStream"
            )
        if stream.state is not _StreamState.IDLE:
            raise ProtocolError(f"publish on stream {stream_id}, which is already publishing")
        stream.name = _command_string(args, 1)
        stream.media_rejected = False
        stream.state = _StreamState.PUBLISH_PENDING
        self._awaiting_publish = stream
        self._events.append(
            PublishRequest(
                stream_id=stream_id,
                name=stream.name,
                publish_type=_command_string(args, 2, "live"),
            )
        )

    def _on_fc_unpublish(self, txid: float, name: str) -> None:
        self._reply_result(txid)
        for stream in self._streams.values():
            if stream.state is _StreamState.PUBLISHING and stream.name == name:
                self._unpublish(stream)
                self._send_status(
                    stream.stream_id,
                    "status",
                    "NetStream.Unpublish.Success",
                    f"{name} is now unpublished",
                )
                return

    def _unpublish(self, stream: _Stream) -> None:
        if stream.state is _StreamState.PUBLISHING:
            stream.state = _StreamState.IDLE
            self._events.append(UnpublishRequest(stream.stream_id))

    # ----------------------------------------------------------------- data, media

    def _publishing(self, stream_id: int) -> _Stream | None:
        stream = self._streams.get(stream_id)
        if stream is None or stream.state is not _StreamState.PUBLISHING:
            return None
        if stream.media_rejected:
            return None
        return stream

    def _on_data(self, message: Message) -> None:
        try:
            values = self._decode(message)
        except amf0.AMF0DecodeError:
            # Metadata is informational: a malformed data message costs the
            # metadata, not the stream.
            self.ignored_messages += 1
            return
        if values and values[0] == "@setDataFrame":
            values = values[1:]
        stream = self._publishing(message.stream_id)
        if (
            stream is None
            or len(values) < 2
            or values[0] != "onMetaData"
            or not isinstance(values[1], dict)
        ):
            self.ignored_messages += 1
            return
        self._events.append(MetaData(stream_id=stream.stream_id, data=dict(values[1])))

    def _reject_media(self, stream: _Stream, exc: UnsupportedCodec) -> None:
        description = str(exc)
        stream.media_rejected = True
        self._send_status(stream.stream_id, "error", "NetStream.Publish.Rejected", description)
        self._events.append(MediaRejected(stream_id=stream.stream_id, description=description))

    def _on_video(self, stream_id: int, raw_timestamp: int, payload: bytes) -> None:
        stream = self._publishing(stream_id)
        if stream is None or not payload:
            self.dropped_media += 1
            return
        try:
            tag = parse_video_tag(payload)
        except UnsupportedCodec as exc:
            self._reject_media(stream, exc)
            return
        if tag is None:  # video info/command frame
            return
        if tag.packet_type is AVCPacketType.SEQUENCE_HEADER:
            timestamp = stream.unwrap(raw_timestamp, commit=False)
            self._events.append(VideoSequenceHeader(stream_id, timestamp, tag.data))
        elif tag.packet_type is AVCPacketType.NALU:
            if not tag.data:
                self.dropped_media += 1
                return
            timestamp = stream.unwrap(raw_timestamp)
            self._events.append(
                VideoFrame(
                    stream_id=stream_id,
                    dts=timestamp,
                    pts=timestamp + tag.composition_time,
                    keyframe=tag.keyframe,
                    data=tag.data,
                )
            )
        else:
            self._events.append(EndOfStream(stream_id))

    def _on_audio(self, stream_id: int, raw_timestamp: int, payload: bytes) -> None:
        stream = self._publishing(stream_id)
        if stream is None or not payload:
            self.dropped_media += 1
            return
        try:
            tag = parse_audio_tag(payload)
        except UnsupportedCodec as exc:
            self._reject_media(stream, exc)
            return
        if tag.packet_type is AACPacketType.SEQUENCE_HEADER:
            timestamp = stream.unwrap(raw_timestamp, commit=False)
            self._events.append(AudioSequenceHeader(stream_id, timestamp, tag.data))
        elif tag.data:
            timestamp = stream.unwrap(raw_timestamp)
            self._events.append(AudioFrame(stream_id, timestamp, tag.data))
        else:
            self.dropped_media += 1

    def _on_aggregate(self, message: Message) -> None:
        """An aggregate message: back-to-back FLV tags (header, body, back pointer)."""
        payload = message.payload
        pos = 0
        first_ts: int | None = None
        while pos < len(payload):
            if len(payload) - pos < 11:
                raise ProtocolError("truncated FLV tag header in aggregate message")
            tag_type = payload[pos]
            size = int.from_bytes(payload[pos + 1 : pos + 4], "big")
            tag_ts = int.from_bytes(payload[pos + 4 : pos + 7], "big") | payload[pos + 7] << 24
            body_start = pos + 11
            body_end = body_start + size
            if body_end + 4 > len(payload):
                raise ProtocolError("truncated FLV tag in aggregate message")
            if first_ts is None:
                first_ts = tag_ts
            timestamp = (message.timestamp + tag_ts - first_ts) % _TS_MOD
            body = payload[body_start:body_end]
            if tag_type == MessageType.VIDEO:
                self._on_video(message.stream_id, timestamp, body)
            elif tag_type == MessageType.AUDIO:
                self._on_audio(message.stream_id, timestamp, body)
            elif tag_type == MessageType.DATA_AMF0:
                self._on_data(Message(MessageType.DATA_AMF0, message.stream_id, timestamp, body))
            else:
                self.ignored_messages += 1
            pos = body_end + 4
