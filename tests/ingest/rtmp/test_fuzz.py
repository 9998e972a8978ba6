"""Property tests: hostile input only ever raises ProtocolError, finishes, and stays bounded."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rtmpclient import ASC, AVCC, Client, aac_sequence_header, avc_sequence_header, drive

from tidecast.ingest import ProtocolError
from tidecast.ingest.rtmp import amf0
from tidecast.ingest.rtmp.chunk import ChunkWriter, Limits, MessageType
from tidecast.ingest.rtmp.protocol import (
    AudioSequenceHeader,
    ConnectRequest,
    PublishRequest,
    ServerConnection,
    VideoSequenceHeader,
)

FUZZ = settings(
    max_examples=400,
    deadline=1000,  # ms per example: a hang fails the test
    suppress_health_check=[HealthCheck.too_slow],
)

# Small limits make the limits themselves reachable by generated input.
SMALL = Limits(
    max_chunk_size=4096,  # the prefix sets 4096, like ffmpeg
    max_message_size=2048,
    max_chunk_streams=8,
    max_message_streams=4,
    max_pending_messages=8,
    max_pending_bytes=1024,
    max_amf_depth=8,
    max_amf_values=256,
)
LIMITS = [Limits(), SMALL]


def cap(limits: Limits) -> int:
    """The buffer cap, computed here independently of the implementation.

    handshake packet + one chunk header (basic 3 + message 11 + extended 4)
    + all partial messages (max_message_size) + the pending-decision queue.
    """
    return 1536 + (3 + 11 + 4) + limits.max_message_size + limits.max_pending_bytes


def _prefix() -> bytes:
    client = Client()
    return b"".join(
        [
            client.publish_prefix("key"),
            client.video(1, 0, avc_sequence_header(AVCC)),
            client.audio(1, 0, aac_sequence_header(ASC)),
        ]
    )


PREFIX = _prefix()


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    pieces = []
    pos = 0
    for size in cuts:
        if pos >= len(data):
            break
        pieces.append(data[pos : pos + size])
        pos += size
    if pos < len(data):
        pieces.append(data[pos:])
    return pieces


def run(pieces: list[bytes], limits: Limits) -> ServerConnection:
    """Feed pieces, answering every request with accept; only ProtocolError may escape."""
    conn = ServerConnection(limits)
    try:
        for piece in pieces:
            conn.receive_data(piece)
            assert conn.buffered_bytes <= cap(limits)
            while events := conn.events():
                for event in events:
                    if isinstance(event, ConnectRequest):
                        conn.accept_connect()
                    elif isinstance(event, PublishRequest):
                        conn.accept_publish(event.stream_id)
                    assert conn.buffered_bytes <= cap(limits)
            conn.data_to_send()
        conn.receive_data(b"")
        conn.events()
    except ProtocolError:
        assert conn.closed
    assert conn.buffered_bytes <= cap(limits)
    return conn


cuts_strategy = st.lists(st.integers(1, 300), max_size=40)


@FUZZ
@given(data=st.binary(max_size=4000), cuts=cuts_strategy, limits=st.sampled_from(LIMITS))
@example(data=b"\x03" + bytes(3072), cuts=[], limits=Limits())
@example(data=PREFIX, cuts=[1] * 50, limits=Limits())
def test_arbitrary_bytes_from_scratch(data: bytes, cuts: list[int], limits: Limits) -> None:
    run(cut(data, cuts), limits)


_HANDSHAKE = Client().handshake()
_CONNECTED = (lambda c: c.handshake() + c.set_chunk_size(4096) + c.connect())(Client())
STAGES = [_HANDSHAKE, _CONNECTED, PREFIX]  # valid prefixes: handshake, connect, publish


@FUZZ
@given(
    stage=st.sampled_from(STAGES),
    garbage=st.binary(max_size=3000),
    cuts=cuts_strategy,
    limits=st.sampled_from(LIMITS),
)
@example(stage=PREFIX, garbage=b"\xc6" * 100, cuts=[], limits=Limits())
@example(
    stage=PREFIX,
    garbage=bytes.fromhex("02 000000 000004 01 00000000 80000000"),
    cuts=[3],
    limits=SMALL,
)
def test_arbitrary_bytes_after_a_valid_prefix(
    stage: bytes, garbage: bytes, cuts: list[int], limits: Limits
) -> None:
    run(cut(stage + garbage, [len(stage), *cuts]), limits)


amf_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["connect", "publish", "createStream", "deleteStream", "FCUnpublish"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)

commands = st.builds(
    lambda name, txid, args: amf0.encode(name, txid, *args),
    st.sampled_from(
        [
            "connect",
            "releaseStream",
            "FCPublish",
            "createStream",
            "publish",
            "FCUnpublish",
            "deleteStream",
            "closeStream",
            "play",
            "_checkbw",
            "whatever",
        ]
    ),
    st.floats() | st.just(0.0) | st.just(1.0),
    st.lists(amf_values, max_size=4),
)

video_payloads = st.builds(  # H.264 tags, valid or not; other codecs
    lambda first, kind, cts, data: bytes([first, kind]) + cts.to_bytes(3, "big") + data,
    st.sampled_from([0x17, 0x27, 0x27, 0x37, 0x1C, 0x90, 0x57, 0x07]),
    st.sampled_from([0, 1, 1, 1, 2, 3]),
    st.integers(0, 0xFFFFFF),
    st.binary(max_size=40),
)
audio_payloads = st.builds(  # AAC tags, valid or not; MP3, enhanced audio
    lambda first, kind, data: bytes([first, kind]) + data,
    st.sampled_from([0xAF, 0xAF, 0xAE, 0x2F, 0x90]),
    st.sampled_from([0, 1, 1, 2]),
    st.binary(max_size=20),
)
metadata_payloads = st.builds(
    lambda prefix, v: amf0.encode(*prefix, v),
    st.sampled_from([("@setDataFrame", "onMetaData"), ("onMetaData",), ("onCuePoint",)]),
    amf_values,
)
amf3 = st.builds(lambda p: b"\x00" + p, commands | metadata_payloads)


def typed(types: list[int], payload: st.SearchStrategy[bytes]) -> st.SearchStrategy[Any]:
    return st.tuples(
        st.sampled_from([3, 4, 5, 6, 8, 64, 320]),  # csid
        st.sampled_from(types),
        st.sampled_from([1, 1, 1, 0, 2, 3]),  # message stream id
        st.integers(0, 0xFFFFFFFF) | st.integers(0, 100_000),  # timestamp
        payload,
    )


messages = st.one_of(
    typed([9], video_payloads),
    typed([8], audio_payloads),
    typed([9, 8], video_payloads),
    typed([20], commands),
    typed([18], metadata_payloads),
    typed([17, 15], amf3),
    typed([3, 4, 5, 6, 19, 22, 99], st.binary(max_size=300)),
    st.tuples(  # chunk size changes and aborts, well-formed or not
        st.just(2),
        st.sampled_from([1, 2]),
        st.just(0),
        st.just(0),
        st.integers(0, 1000).map(lambda n: n.to_bytes(4, "big")) | st.binary(max_size=6),
    ),
)


@FUZZ
@given(
    msgs=st.lists(messages, max_size=12),
    chunk_size=st.integers(1, 512),
    cuts=cuts_strategy,
    limits=st.sampled_from(LIMITS),
)
def test_well_formed_chunks_with_hostile_messages(
    msgs: list[tuple[int, int, int, int, bytes]],
    chunk_size: int,
    cuts: list[int],
    limits: Limits,
) -> None:
    """Valid framing, random messages: reaches command, control and media handling."""
    writer = ChunkWriter()
    wire = bytearray(PREFIX)
    wire += writer.set_chunk_size(chunk_size)  # continues the client's chunk stream 2
    for csid, type_id, stream_id, ts, payload in msgs:
        if type_id == MessageType.SET_CHUNK_SIZE:
            payload = payload[:4]
        wire += writer.write(csid, type_id, stream_id, ts, payload)
        if type_id == MessageType.SET_CHUNK_SIZE and len(payload) == 4:
            size = int.from_bytes(payload, "big")
            if 1 <= size <= 0x7FFFFFFF:  # keep framing valid: the reader switches too
                writer = ChunkWriter(size)
    run(cut(bytes(wire), [len(PREFIX), *cuts]), limits)


def test_prefix_reaches_the_publishing_state() -> None:
    events, _ = drive(ServerConnection(), [PREFIX])
    assert [type(e) for e in events] == [
        ConnectRequest,
        PublishRequest,
        VideoSequenceHeader,
        AudioSequenceHeader,
    ]


@FUZZ
@given(st.binary(max_size=500))
@example(b"\x0a\x7f\xff\xff\xff")
@example(b"\x03" * 100)
def test_amf0_decode_arbitrary_bytes(data: bytes) -> None:
    try:
        values = amf0.decode_all(data, max_depth=8, max_values=100)
    except amf0.AMF0DecodeError as exc:
        assert str(exc)  # every error explains itself
        return
    assert amf0.decode_all(amf0.encode(*values), max_depth=8, max_values=100) is not None


@FUZZ
@given(st.lists(amf_values, max_size=5))
def test_amf0_round_trip_of_command_like_values(values: list[Any]) -> None:
    decoded = amf0.decode_all(amf0.encode(*values))
    assert len(decoded) == len(values)
