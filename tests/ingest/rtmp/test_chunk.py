"""The chunk layer: hand-built bytes for every header format, writer round trips, limits."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidecast.ingest import ProtocolError
from tidecast.ingest.rtmp.chunk import (
    MAX_CHUNK_HEADER_SIZE,
    ChunkError,
    ChunkReader,
    ChunkWriter,
    Limits,
    Message,
    MessageType,
    encode_basic_header,
)

H = bytes.fromhex


def feed_whole(data: bytes, limits: Limits | None = None) -> list[Message]:
    return ChunkReader(limits).feed(data)


def feed_bytewise(data: bytes, limits: Limits | None = None) -> list[Message]:
    reader = ChunkReader(limits)
    out: list[Message] = []
    cap = MAX_CHUNK_HEADER_SIZE + reader_limits(limits).max_message_size
    for i in range(len(data)):
        out += reader.feed(data[i : i + 1])
        assert reader.buffered_bytes <= cap
    return out


def reader_limits(limits: Limits | None) -> Limits:
    return limits if limits is not None else Limits()


def both_ways(data: bytes, limits: Limits | None = None) -> list[Message]:
    whole = feed_whole(data, limits)
    assert feed_bytewise(data, limits) == whole
    return whole


def summary(messages: Iterable[Message]) -> list[tuple[int, int, int, int, bytes]]:
    return [(m.csid, m.type_id, m.stream_id, m.timestamp, m.payload) for m in messages]


# ------------------------------------------------------------------- header formats


def test_format0_single_chunk() -> None:
    data = H("03 000064 000005 14 00000000") + b"hello"
    assert summary(both_ways(data)) == [(3, 20, 0, 100, b"hello")]


def test_format0_stream_id_is_little_endian() -> None:
    data = H("05 000000 000001 12 01020000") + b"x"
    assert both_ways(data)[0].stream_id == 0x0201


def test_format0_extended_timestamp() -> None:
    data = H("06 ffffff 000003 09 01000000 12345678") + b"abc"
    assert summary(both_ways(data)) == [(6, 9, 1, 0x12345678, b"abc")]


def test_format3_continuation_chunks() -> None:
    body = bytes(range(200))
    data = H("04 000000 0000c8 08 01000000") + body[:128] + H("c4") + body[128:]
    assert summary(both_ways(data)) == [(4, 8, 1, 0, body)]


def test_extended_timestamp_repeated_on_format3_continuation() -> None:
    body = bytes(range(200))
    data = (
        H("04 ffffff 0000c8 08 01000000 01000000")
        + body[:128]
        + H("c4 01000000")  # continuation repeats the extended timestamp
        + body[128:]
    )
    assert summary(both_ways(data)) == [(4, 8, 1, 0x01000000, body)]


def test_format1_and_format2_deltas_and_format3_new_message() -> None:
    data = (
        H("04 0003e8 000003 08 01000000")  # fmt 0: ts 1000, len 3, audio, stream 1
        + b"aaa"
        + H("44 000014 000002 09")  # fmt 1: delta 20, len 2, video
        + b"vv"
        + H("84 00000a")  # fmt 2: delta 10, same length and type
        + b"ww"
        + H("c4")  # fmt 3 starting a message: reuse everything, delta 10 again
        + b"xx"
    )
    assert summary(both_ways(data)) == [
        (4, 8, 1, 1000, b"aaa"),
        (4, 9, 1, 1020, b"vv"),
        (4, 9, 1, 1030, b"ww"),
        (4, 9, 1, 1040, b"xx"),
    ]


def test_format3_after_format0_reuses_its_timestamp_field() -> None:
    # As ffmpeg and SRS read it: the format-0 timestamp field acts as the delta.
    data = H("04 000028 000001 08 01000000") + b"a" + H("c4") + b"b"
    assert [m.timestamp for m in both_ways(data)] == [40, 80]


def test_format2_extended_delta_then_format3_reads_extended_field() -> None:
    data = (
        H("04 000000 000001 08 01000000")
        + b"a"
        + H("84 ffffff 00010000")  # fmt 2, extended delta 0x10000
        + b"b"
        + H("c4 00010000")  # fmt 3 new message: extended field present (previous had one)
        + b"c"
    )
    assert [m.timestamp for m in both_ways(data)] == [0, 0x10000, 0x20000]


def test_timestamp_deltas_wrap_at_32_bits() -> None:
    data = H("04 ffffff 000001 08 01000000 fffffff0") + b"a" + H("84 000020") + b"b"
    assert [m.timestamp for m in both_ways(data)] == [0xFFFFFFF0, 0x10]


@pytest.mark.parametrize(
    ("basic", "csid"),
    [
        (H("02"), 2),
        (H("3f"), 63),
        (H("00 00"), 64),
        (H("00 ff"), 319),
        (H("01 00 01"), 320),
        (H("01 ff ff"), 65599),
    ],
)
def test_basic_header_sizes(basic: bytes, csid: int) -> None:
    assert encode_basic_header(0, csid) == basic
    data = basic + H("000000 000001 14 00000000") + b"z"
    assert both_ways(data)[0].csid == csid
    # and a format-3 continuation with the same long basic header
    cont = bytes([basic[0] | 0xC0]) + basic[1:]
    data = basic + H("000000 000081 14 00000000") + b"q" * 128 + cont + b"r"
    assert both_ways(data)[0].payload == b"q" * 128 + b"r"


def test_interleaved_chunk_streams() -> None:
    audio = b"A" * 150
    video = b"V" * 300
    data = (
        H("06 000000 00012c 09 01000000")
        + video[:128]
        + H("04 000000 000096 08 01000000")
        + audio[:128]
        + H("c6")
        + video[128:256]
        + H("c4")
        + audio[128:]
        + H("c6")
        + video[256:]
    )
    assert summary(both_ways(data)) == [(4, 8, 1, 0, audio), (6, 9, 1, 0, video)]


def test_zero_length_message() -> None:
    data = H("03 000001 000000 14 00000000") + H("03 000002 000001 14 00000000") + b"x"
    assert summary(both_ways(data)) == [(3, 20, 0, 1, b""), (3, 20, 0, 2, b"x")]


# --------------------------------------------------------------------- control


def test_set_chunk_size_applies_to_following_chunks_and_is_returned() -> None:
    body = bytes(range(256)) * 4
    data = H("02 000000 000004 01 00000000 00000400") + H("03 000000 000400 14 00000000") + body
    reader = ChunkReader()
    messages = reader.feed(data)
    assert [m.type_id for m in messages] == [MessageType.SET_CHUNK_SIZE, 20]
    assert messages[1].payload == body
    assert reader.chunk_size == 1024
    assert feed_bytewise(data) == messages


def test_abort_drops_partial_message() -> None:
    reader = ChunkReader()
    partial = H("06 000000 00012c 09 01000000") + b"p" * 128
    assert reader.feed(partial) == []
    assert reader.buffered_bytes == 128
    abort = H("02 000000 000004 02 00000000 00000006")
    assert [m.type_id for m in reader.feed(abort)] == [MessageType.ABORT]
    assert reader.buffered_bytes == 0
    # the chunk stream can start a fresh message (its header is kept for format 1..3)
    fresh = H("46 000010 000002 09") + b"ok"
    assert summary(reader.feed(fresh)) == [(6, 9, 1, 16, b"ok")]


def test_abort_of_idle_or_unknown_stream_is_harmless() -> None:
    data = H("02 000000 000004 02 00000000 00000009") + H("03 000000 000001 14 00000000") + b"x"
    assert [m.payload for m in both_ways(data)] == [H("00000009"), b"x"]


# ------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("data", "limits", "message"),
    [
        (
            H("02 000000 000004 01 00000000 80000000"),
            None,
            "chunk size 2147483648 exceeds limit 65536",
        ),
        (
            H("02 000000 000004 01 00000000 00010001"),
            None,
            "chunk size 65537 exceeds limit 65536",
        ),
        (H("02 000000 000004 01 00000000 00000000"), None, "invalid chunk size 0"),
        (H("02 000000 000002 01 00000000 0001"), None, "truncated Set Chunk Size"),
        (H("02 000000 000001 02 00000000 00"), None, "truncated Abort"),
        (
            H("03 000000 0003e9 14 00000000"),
            Limits(max_message_size=1000),
            "message length 1001 exceeds limit 1000",
        ),
        (H("43 000000 000001 14") + b"x", None, "chunk stream 3: first chunk has header format 1"),
        (H("84 000000"), None, "chunk stream 4: first chunk has header format 2"),
        (H("c5"), None, "chunk stream 5: first chunk has header format 3"),
        (H("c1 ff ff"), None, "chunk stream 65599: first chunk has header format 3"),
        (
            H("04 000000 0000c8 08 01000000") + b"a" * 128 + H("44 000000 000001 08"),
            None,
            r"chunk stream 4: new message header \(format 1\) before the previous message "
            r"was complete \(72 bytes missing\)",
        ),
        (
            H("04 000000 00012c 08 01000000")
            + b"a" * 128
            + H("05 000000 00012c 08 01000000")
            + b"b" * 128
            + H("06 000000 00012c 08 01000000")
            + b"c" * 128,
            Limits(max_message_size=300),
            "partially received messages exceed 300 bytes in total",
        ),
    ],
)
def test_chunk_errors(data: bytes, limits: Limits | None, message: str) -> None:
    for feed in (feed_whole, feed_bytewise):
        with pytest.raises(ChunkError, match=message) as info:
            feed(data, limits)
        assert isinstance(info.value, ProtocolError)


def test_too_many_chunk_streams() -> None:
    one = H("000000 000000 14 00000000")
    ok = b"".join(encode_basic_header(0, csid) + one for csid in range(2, 66))
    assert len(feed_whole(ok)) == 64
    with pytest.raises(ChunkError, match=r"too many chunk streams \(limit 64\)"):
        feed_whole(ok + encode_basic_header(0, 66) + one)
    with pytest.raises(ChunkError, match=r"too many chunk streams \(limit 3\)"):
        feed_bytewise(ok, Limits(max_chunk_streams=3))


# ------------------------------------------------------------------------ writer


def test_writer_format0_then_format3() -> None:
    writer = ChunkWriter()
    assert writer.write(3, 20, 0, 0, b"abc") == H("03 000000 000003 14 00000000") + b"abc"
    body = bytes(200)
    assert writer.write(4, 9, 1, 5, body) == (
        H("04 000005 0000c8 09 01000000") + body[:128] + H("c4") + body[128:]
    )


def test_writer_extended_timestamp_on_every_chunk() -> None:
    body = bytes(range(200))
    assert ChunkWriter().write(4, 9, 1, 0x01000000, body) == (
        H("04 ffffff 0000c8 09 01000000 01000000") + body[:128] + H("c4 01000000") + body[128:]
    )
    assert ChunkWriter().write(4, 9, 1, 0xFFFFFF, b"")[1:4] == H("ffffff")
    assert ChunkWriter().write(4, 9, 1, 0xFFFFFE, b"")[1:4] == H("fffffe")


def test_writer_set_chunk_size() -> None:
    writer = ChunkWriter()
    assert writer.set_chunk_size(4096) == H("02 000000 000004 01 00000000 00001000")
    assert writer.chunk_size == 4096
    assert len(writer.write(3, 20, 0, 0, bytes(4096))) == 12 + 4096
    with pytest.raises(ValueError):
        writer.set_chunk_size(0)


@pytest.mark.parametrize("csid", [0, 1, 65600])
def test_writer_rejects_bad_chunk_stream_ids(csid: int) -> None:
    with pytest.raises(ValueError):
        encode_basic_header(0, csid)


# ------------------------------------------------------------------- round trips


def split_chunks(wire: bytes, csid: int, length: int, timestamp: int, size: int) -> list[bytes]:
    """Cut one message written by ChunkWriter into its chunks."""
    basic = len(encode_basic_header(0, csid))
    ext = 4 if timestamp & 0xFFFFFFFF >= 0xFFFFFF else 0
    first = basic + 11 + ext + min(size, length)
    chunks = [wire[:first]]
    pos = first
    while pos < len(wire):
        end = pos + basic + ext + size
        chunks.append(wire[pos:end])
        pos = end
    assert b"".join(chunks) == wire
    return chunks


MESSAGES = [
    # (csid, type, stream id, timestamp, payload length)
    (3, 20, 0, 0, 0),
    (3, 20, 0, 1, 1),
    (4, 8, 1, 23, 127),
    (6, 9, 1, 0xFFFFFE, 128),
    (6, 9, 1, 0xFFFFFF, 129),
    (64, 18, 1, 0x12345678, 1000),
    (319, 9, 7, 0xFFFFFFFF, 4097),
    (320, 8, 1, 40, 5000),
    (65599, 9, 0xFFFFFFFF, 0x01000000, 70000),
]


def make_payload(n: int, seed: int) -> bytes:
    return bytes((i * 31 + seed) & 0xFF for i in range(n))


@pytest.mark.parametrize("chunk_size", [1, 7, 128, 4096, 65536])
@pytest.mark.parametrize("interleave", [False, True])
def test_writer_reader_round_trip(chunk_size: int, interleave: bool) -> None:
    writer = ChunkWriter()
    wire = bytearray(writer.set_chunk_size(chunk_size))
    expected = []
    per_stream: dict[int, list[bytes]] = {}  # chunks by chunk stream, in message order
    for seed, (csid, type_id, stream_id, ts, length) in enumerate(MESSAGES):
        payload = make_payload(length, seed)
        written = writer.write(csid, type_id, stream_id, ts, payload)
        expected.append((csid, type_id, stream_id, ts, payload))
        per_stream.setdefault(csid, []).extend(split_chunks(written, csid, length, ts, chunk_size))
    queues = list(per_stream.values())
    if interleave:  # round-robin over chunk streams, chunk by chunk
        while any(queues):
            for chunks in queues:
                if chunks:
                    wire += chunks.pop(0)
    else:
        wire += b"".join(b"".join(c) for c in queues)
    got = [m for m in feed_whole(bytes(wire)) if m.type_id != MessageType.SET_CHUNK_SIZE]
    assert sorted(summary(got)) == sorted(expected)
    for csid in per_stream:  # per chunk stream, messages complete in order
        assert [m for m in summary(got) if m[0] == csid] == [e for e in expected if e[0] == csid]
    if chunk_size >= 128:  # byte by byte over ~90 KB is slow with 1-byte chunks
        bytewise = feed_bytewise(bytes(wire))
        assert [m for m in bytewise if m.type_id != MessageType.SET_CHUNK_SIZE] == got


message_strategy = st.tuples(
    st.sampled_from([2, 3, 4, 5, 6, 63, 64, 300, 319, 320, 1000, 65599]),
    st.integers(0, 255).filter(lambda t: t not in (1, 2)),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.binary(max_size=600),
)


@settings(max_examples=150, deadline=2000)
@given(
    chunk_size=st.integers(1, 300),
    messages=st.lists(message_strategy, max_size=8),
    cuts=st.lists(st.integers(1, 64), max_size=50),
)
def test_round_trip_property(
    chunk_size: int, messages: list[tuple[int, int, int, int, bytes]], cuts: list[int]
) -> None:
    writer = ChunkWriter()
    wire = writer.set_chunk_size(chunk_size) + b"".join(writer.write(*m) for m in messages)
    reader = ChunkReader()
    got: list[Message] = []
    pos = 0
    for cut in [*cuts, len(wire)]:
        got += reader.feed(wire[pos : pos + cut])
        pos += cut
    got += reader.feed(wire[pos:])
    assert summary(got[1:]) == [(c, t, s, ts, p) for c, t, s, ts, p in messages]
    assert reader.buffered_bytes == 0
