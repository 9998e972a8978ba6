"""A tiny sans-I/O RTMP publishing client for tests, built on ChunkWriter/ChunkReader/amf0.

It produces the bytes a publisher (ffmpeg/OBS-like) sends and parses what the
server sends back. Because the server's replies never change what a publisher
sends (stream ids are deterministic), a whole session can be built up front and
fed to a ServerConnection in any split.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from tidecast.ingest.rtmp import amf0
from tidecast.ingest.rtmp.chunk import ChunkReader, ChunkWriter, Limits, Message, MessageType
from tidecast.ingest.rtmp.protocol import ConnectRequest, Event, PublishRequest, ServerConnection

HANDSHAKE_SIZE = 1536

# Chunk streams as ffmpeg uses them.
CSID_CONTROL = 2
CSID_COMMAND = 3
CSID_AUDIO = 4
CSID_VIDEO = 6
CSID_DATA = 5


def avc_sequence_header(avcc: bytes, timestamp_cts: int = 0) -> bytes:
    return bytes([0x17, 0x00]) + timestamp_cts.to_bytes(3, "big") + avcc


def avc_nalu(data: bytes, *, keyframe: bool, cts: int = 0) -> bytes:
    first = 0x17 if keyframe else 0x27
    return bytes([first, 0x01]) + (cts & 0xFFFFFF).to_bytes(3, "big") + data


def avc_end_of_sequence() -> bytes:
    return bytes([0x17, 0x02, 0, 0, 0])


def aac_sequence_header(asc: bytes) -> bytes:
    return bytes([0xAF, 0x00]) + asc


def aac_raw(data: bytes) -> bytes:
    return bytes([0xAF, 0x01]) + data


# A real AVCDecoderConfigurationRecord (High profile, level 3.0) and AAC-LC 44.1 kHz stereo.
AVCC = bytes.fromhex(
    "0164001effe1001b6764001eacd940a02ff9610000030001000003003c0f162d9601000668ebe3cb22c0"
)
ASC = bytes.fromhex("1210")
NALUS = b"\x00\x00\x00\x05\x65\x88\x84\x00\x10"


@dataclass
class Reply:
    """A server message, with AMF values decoded for command/data messages."""

    type_id: int
    stream_id: int
    payload: bytes
    values: list[Any] | None

    @property
    def name(self) -> str | None:
        return self.values[0] if self.values else None


class Client:
    """Builds publisher bytes and parses the server's replies."""

    def __init__(self) -> None:
        self.writer = ChunkWriter()
        self.reader = ChunkReader(Limits())
        self._handshake_left = 1 + 2 * HANDSHAKE_SIZE
        self.server_handshake = bytearray()
        self.c1 = bytes(range(256)) * 6  # deterministic 1536 bytes
        self.txid = 0

    # ------------------------------------------------------------ client -> server

    def handshake(self) -> bytes:
        """C0 + C1 + C2 (the server accepts any C2, so it need not wait for S1)."""
        return b"\x03" + self.c1 + b"\xaa" * HANDSHAKE_SIZE

    def message(
        self, type_id: int, payload: bytes, *, stream_id: int = 0, timestamp: int = 0, csid: int
    ) -> bytes:
        return self.writer.write(csid, type_id, stream_id, timestamp, payload)

    def command(
        self, name: str, *args: object, stream_id: int = 0, txid: float | None = None
    ) -> bytes:
        if txid is None:
            self.txid += 1
            txid = self.txid
        payload = amf0.encode(name, txid, *args)
        csid = CSID_COMMAND if stream_id == 0 else CSID_DATA
        return self.message(MessageType.COMMAND_AMF0, payload, stream_id=stream_id, csid=csid)

    def connect(self, app: str = "live", tc_url: str = "rtmp://localhost/live") -> bytes:
        return self.command(
            "connect",
            {"app": app, "type": "nonprivate", "flashVer": "FMLE/3.0", "tcUrl": tc_url},
        )

    def set_chunk_size(self, size: int) -> bytes:
        return self.writer.set_chunk_size(size)

    def publish_prefix(self, name: str = "key", chunk_size: int = 4096) -> bytes:
        """Everything up to (and including) publish on stream 1, like ffmpeg sends it."""
        return b"".join(
            [
                self.handshake(),
                self.set_chunk_size(chunk_size),
                self.connect(),
                self.command("releaseStream", None, name),
                self.command("FCPublish", None, name),
                self.command("createStream", None),
                self.command("publish", None, name, "live", stream_id=1),
            ]
        )

    def metadata(self, stream_id: int, data: dict[str, Any]) -> bytes:
        payload = amf0.encode("@setDataFrame", "onMetaData", amf0.ECMAArray(data))
        return self.message(MessageType.DATA_AMF0, payload, stream_id=stream_id, csid=CSID_DATA)

    def video(self, stream_id: int, timestamp: int, payload: bytes) -> bytes:
        return self.message(
            MessageType.VIDEO, payload, stream_id=stream_id, timestamp=timestamp, csid=CSID_VIDEO
        )

    def audio(self, stream_id: int, timestamp: int, payload: bytes) -> bytes:
        return self.message(
            MessageType.AUDIO, payload, stream_id=stream_id, timestamp=timestamp, csid=CSID_AUDIO
        )

    # ------------------------------------------------------------ server -> client

    def receive(self, data: bytes) -> list[Reply]:
        """Parse server bytes: S0+S1+S2 first (kept in server_handshake), then messages."""
        if self._handshake_left:
            take = min(self._handshake_left, len(data))
            self.server_handshake += data[:take]
            self._handshake_left -= take
            data = data[take:]
        return [decode_reply(m) for m in self.reader.feed(data)]


def decode_reply(message: Message) -> Reply:
    values = None
    if message.type_id in (MessageType.COMMAND_AMF0, MessageType.DATA_AMF0):
        values = amf0.decode_all(message.payload)
    return Reply(message.type_id, message.stream_id, message.payload, values)


def splits(data: bytes, sizes: Iterable[int]) -> Iterator[bytes]:
    """Cut ``data`` into pieces of the given sizes, the rest in one last piece."""
    pos = 0
    for size in sizes:
        if pos >= len(data):
            return
        yield data[pos : pos + max(1, size)]
        pos += max(1, size)
    if pos < len(data):
        yield data[pos:]


def byte_by_byte(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]


def pump(conn: ServerConnection, events: list[Event], *, accept: bool = True) -> None:
    """Drain events (answering connect/publish requests when ``accept``) until none are left."""
    while True:
        new = conn.events()
        if not new:
            return
        for event in new:
            events.append(event)
            if accept and isinstance(event, ConnectRequest):
                conn.accept_connect()
            elif accept and isinstance(event, PublishRequest):
                conn.accept_publish(event.stream_id)


def drive(
    conn: ServerConnection, pieces: Iterable[bytes], *, accept: bool = True
) -> tuple[list[Event], bytes]:
    """Feed ``pieces`` to ``conn``; return all events and all bytes it wants to send."""
    events: list[Event] = []
    out = bytearray()
    for piece in pieces:
        conn.receive_data(piece)
        pump(conn, events, accept=accept)
        out += conn.data_to_send()
    return events, bytes(out)
