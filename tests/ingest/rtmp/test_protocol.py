"""ServerConnection end to end, driven by the test-only client in rtmpclient.py."""

from __future__ import annotations

import random
from typing import Any

import pytest
from rtmpclient import (
    ASC,
    AVCC,
    CSID_COMMAND,
    CSID_VIDEO,
    HANDSHAKE_SIZE,
    NALUS,
    Client,
    Reply,
    aac_raw,
    aac_sequence_header,
    avc_end_of_sequence,
    avc_nalu,
    avc_sequence_header,
    byte_by_byte,
    drive,
    pump,
    splits,
)

from tidecast.ingest import ProtocolError
from tidecast.ingest.rtmp import amf0
from tidecast.ingest.rtmp.amf0 import UNDEFINED, ECMAArray
from tidecast.ingest.rtmp.chunk import ChunkError, Limits, MessageType
from tidecast.ingest.rtmp.handshake import HandshakeError
from tidecast.ingest.rtmp.protocol import (
    AudioFrame,
    AudioSequenceHeader,
    ConnectRequest,
    EndOfStream,
    Event,
    MediaRejected,
    MetaData,
    PublishRequest,
    ServerConnection,
    UnpublishRequest,
    VideoFrame,
    VideoSequenceHeader,
    max_buffered_bytes,
)

META = {"width": 640.0, "height": 360.0, "framerate": 30.0, "encoder": "Lavf60"}


def session(client: Client) -> bytes:
    """A complete ffmpeg-like publish session, start to finish."""
    parts = [
        client.publish_prefix("key"),
        client.metadata(1, META),
        client.video(1, 0, avc_sequence_header(AVCC)),
        client.audio(1, 0, aac_sequence_header(ASC)),
        client.video(1, 0, avc_nalu(NALUS, keyframe=True, cts=66)),
        client.audio(1, 0, aac_raw(b"\x21\x10\x04")),
        client.audio(1, 23, aac_raw(b"\x21\x10\x05" * 100)),
        client.video(1, 33, avc_nalu(NALUS * 1000, keyframe=False, cts=-33)),  # multi-chunk
        client.video(1, 67, avc_end_of_sequence()),
        client.command("FCUnpublish", None, "key"),
        client.command("deleteStream", None, 1.0),
    ]
    return b"".join(parts)


EXPECTED_EVENTS: list[Event] = [
    ConnectRequest(
        app="live",
        tc_url="rtmp://localhost/live",
        properties={
            "app": "live",
            "type": "nonprivate",
            "flashVer": "FMLE/3.0",
            "tcUrl": "rtmp://localhost/live",
        },
    ),
    PublishRequest(stream_id=1, name="key", publish_type="live"),
    MetaData(stream_id=1, data=META),
    VideoSequenceHeader(stream_id=1, timestamp=0, avcc=AVCC),
    AudioSequenceHeader(stream_id=1, timestamp=0, asc=ASC),
    VideoFrame(stream_id=1, dts=0, pts=66, keyframe=True, data=NALUS),
    AudioFrame(stream_id=1, timestamp=0, data=b"\x21\x10\x04"),
    AudioFrame(stream_id=1, timestamp=23, data=b"\x21\x10\x05" * 100),
    VideoFrame(stream_id=1, dts=33, pts=0, keyframe=False, data=NALUS * 1000),
    EndOfStream(stream_id=1),
    UnpublishRequest(stream_id=1),
]


def status(level: str, code: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"level": level, "code": code, "description": description, **extra}


EXPECTED_REPLIES: list[tuple[int, int, Any]] = [
    (MessageType.WINDOW_ACK_SIZE, 0, (2_500_000).to_bytes(4, "big")),
    (MessageType.SET_PEER_BANDWIDTH, 0, (2_500_000).to_bytes(4, "big") + b"\x02"),
    (MessageType.SET_CHUNK_SIZE, 0, (4096).to_bytes(4, "big")),
    (
        MessageType.COMMAND_AMF0,
        0,
        [
            "_result",
            1.0,
            {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0},
            status(
                "status",
                "NetConnection.Connect.Success",
                "Connection succeeded.",
                objectEncoding=0.0,
            ),
        ],
    ),
    (MessageType.COMMAND_AMF0, 0, ["_result", 2.0, None, UNDEFINED]),  # releaseStream
    (MessageType.COMMAND_AMF0, 0, ["_result", 3.0, None, UNDEFINED]),  # FCPublish
    (
        MessageType.COMMAND_AMF0,
        0,
        ["onFCPublish", 0.0, None, status("status", "NetStream.Publish.Start", "key")],
    ),
    (MessageType.COMMAND_AMF0, 0, ["_result", 4.0, None, 1.0]),  # createStream
    (MessageType.USER_CONTROL, 0, bytes.fromhex("0000 00000001")),  # StreamBegin 1
    (
        MessageType.COMMAND_AMF0,
        1,
        [
            "onStatus",
            0.0,
            None,
            status("status", "NetStream.Publish.Start", "key is now published", details="key"),
        ],
    ),
    (MessageType.COMMAND_AMF0, 0, ["_result", 6.0, None, UNDEFINED]),  # FCUnpublish
    (
        MessageType.COMMAND_AMF0,
        1,
        [
            "onStatus",
            0.0,
            None,
            status("status", "NetStream.Unpublish.Success", "key is now unpublished"),
        ],
    ),
]


def simplify(replies: list[Reply]) -> list[tuple[int, int, Any]]:
    return [
        (r.type_id, r.stream_id, r.values if r.values is not None else r.payload) for r in replies
    ]


def publishing(client: Client, conn: ServerConnection, name: str = "key") -> list[Event]:
    """Drive ``conn`` through handshake, connect and publish on stream 1; eat the replies."""
    events, out = drive(conn, [client.publish_prefix(name)])
    client.receive(out)
    assert isinstance(events[-1], PublishRequest)
    return events


def random_splits(data: bytes) -> list[bytes]:
    rng = random.Random(7)
    return list(splits(data, [rng.randint(1, 700) for _ in range(len(data))]))


def run_session(pieces_of: Any) -> tuple[ServerConnection, Client, list[Event], list[Reply]]:
    client = Client()
    data = session(client)
    conn = ServerConnection()
    events, out = drive(conn, pieces_of(data))
    replies = client.receive(out)
    return conn, client, events, replies


@pytest.mark.parametrize(
    "pieces_of",
    [
        pytest.param(lambda d: [d], id="whole"),
        pytest.param(byte_by_byte, id="byte-by-byte"),
        pytest.param(random_splits, id="random-splits"),
    ],
)
def test_full_publish_flow(pieces_of: Any) -> None:
    conn, client, events, replies = run_session(pieces_of)
    # handshake
    s0s1s2 = bytes(client.server_handshake)
    assert s0s1s2[0] == 3
    assert s0s1s2[5:9] == b"\x00\x00\x00\x00"
    assert s0s1s2[1 + HANDSHAKE_SIZE :] == client.c1
    # replies and events
    assert simplify(replies) == EXPECTED_REPLIES
    assert events == EXPECTED_EVENTS
    assert type(events[2].data) is dict  # type: ignore[union-attr]
    assert conn.bytes_received == len(session(Client()))
    assert conn.dropped_media == 0
    assert not conn.closed
    conn.receive_data(b"")
    assert conn.closed
    assert conn.events() == []  # already unpublished: no second UnpublishRequest


def test_reply_ordering_is_the_same_when_client_waits_for_each_reply() -> None:
    """Like ffmpeg: connect, wait; release/FCPublish/createStream, wait; publish, wait."""
    client = Client()
    conn = ServerConnection()
    events: list[Event] = []
    conn.receive_data(client.handshake())
    client.receive(conn.data_to_send())
    conn.receive_data(client.connect())
    assert conn.data_to_send() == b""  # nothing until the application decides
    [request] = conn.events()
    assert isinstance(request, ConnectRequest)
    conn.accept_connect()
    assert [r.name for r in client.receive(conn.data_to_send())][-1] == "_result"
    conn.receive_data(client.command("createStream", None))
    assert client.receive(conn.data_to_send())[0].values == ["_result", 2.0, None, 1.0]
    conn.receive_data(client.command("publish", None, "cam", "live", stream_id=1, txid=0))
    pump(conn, events, accept=False)
    assert events == [PublishRequest(1, "cam", "live")]
    assert conn.data_to_send() == b""
    conn.accept_publish(1)
    replies = client.receive(conn.data_to_send())
    assert replies[0].payload == bytes.fromhex("0000 00000001")
    assert replies[1].values is not None
    assert replies[1].values[3]["code"] == "NetStream.Publish.Start"


def test_reject_connect() -> None:
    client = Client()
    conn = ServerConnection()
    conn.receive_data(client.handshake() + client.connect(app="nope"))
    [request] = conn.events()
    assert isinstance(request, ConnectRequest) and request.app == "nope"
    conn.reject_connect("unknown application 'nope'")
    assert conn.closed
    replies = client.receive(conn.data_to_send())
    assert simplify(replies) == [
        (
            MessageType.COMMAND_AMF0,
            0,
            [
                "_error",
                1.0,
                None,
                status("error", "NetConnection.Connect.Rejected", "unknown application 'nope'"),
            ],
        )
    ]
    conn.receive_data(client.command("createStream", None))  # ignored once closed
    assert conn.data_to_send() == b""


def test_reject_publish_then_media_is_dropped() -> None:
    client = Client()
    conn = ServerConnection()
    data = client.publish_prefix("bad") + client.video(1, 0, avc_sequence_header(AVCC))
    conn.receive_data(data)
    events: list[Event] = []
    for event in conn.events():
        events.append(event)
        assert isinstance(event, ConnectRequest)
        conn.accept_connect()
    [publish] = conn.events()
    assert isinstance(publish, PublishRequest)
    conn.reject_publish(1, "NetStream.Publish.BadName", "stream key not found")
    assert conn.events() == []  # the queued video is dropped: the stream is not publishing
    assert conn.dropped_media == 1
    replies = client.receive(conn.data_to_send())
    assert replies[-1].stream_id == 1
    assert replies[-1].values == [
        "onStatus",
        0.0,
        None,
        status("error", "NetStream.Publish.BadName", "stream key not found"),
    ]
    assert not conn.closed


def test_publish_again_after_rejection() -> None:
    client = Client()
    conn = ServerConnection()
    conn.receive_data(client.publish_prefix("a"))
    [connect] = conn.events()
    assert isinstance(connect, ConnectRequest)
    conn.accept_connect()
    assert conn.events() == [PublishRequest(1, "a", "live")]
    conn.reject_publish(1, "NetStream.Publish.BadName", "no")
    conn.receive_data(client.command("publish", None, "b", "live", stream_id=1, txid=0))
    events: list[Event] = []
    pump(conn, events)
    assert events == [PublishRequest(1, "b", "live")]


def test_media_before_publish_is_dropped_not_an_event() -> None:
    client = Client()
    data = (
        client.handshake()
        + client.connect()
        + client.command("createStream", None)
        + client.video(1, 0, avc_sequence_header(AVCC))
        + client.audio(1, 0, aac_raw(b"x"))
        + client.video(7, 0, avc_sequence_header(AVCC))  # a stream that does not exist
    )
    conn = ServerConnection()
    events, _ = drive(conn, [data])
    assert [type(e) for e in events] == [ConnectRequest]
    assert conn.dropped_media == 3


def test_messages_pipelined_during_a_pending_decision_are_held_then_processed() -> None:
    client = Client()
    data = session(client)
    conn = ServerConnection()
    conn.receive_data(data)
    [connect] = conn.events()
    assert isinstance(connect, ConnectRequest)
    assert conn.buffered_bytes > 0  # the rest of the session waits in the pending queue
    conn.accept_connect()
    [publish] = conn.events()
    assert isinstance(publish, PublishRequest)
    conn.accept_publish(1)
    events = conn.events()
    assert events == EXPECTED_EVENTS[2:]
    assert conn.buffered_bytes == 0


def test_pending_queue_is_bounded() -> None:
    client = Client()
    limits = Limits(max_pending_messages=3)
    conn = ServerConnection(limits)
    data = (
        client.handshake()
        + client.connect()
        + b"".join(client.command("checkBandwidth", None) for _ in range(4))
    )
    with pytest.raises(ProtocolError, match=r"awaiting a decision \(limits: 3 messages"):
        conn.receive_data(data)
    assert conn.closed
    limits = Limits(max_pending_bytes=100)
    conn = ServerConnection(limits)
    data = client.handshake() + client.connect() + client.video(1, 0, bytes(101))
    with pytest.raises(ProtocolError, match="100 bytes"):
        conn.receive_data(data)


def test_unsupported_codec_rejects_media_with_on_status() -> None:
    client = Client()
    data = (
        client.publish_prefix("key")
        + client.video(1, 0, bytes.fromhex("1c 00 000000 0102"))  # HEVC, codec id 12
        + client.video(1, 40, bytes.fromhex("1c 01 000000 0102"))
    )
    conn = ServerConnection()
    events, out = drive(conn, [data])
    description = "video codec HEVC (FLV codec id 12) is not supported; publish H.264"
    assert events[2:] == [MediaRejected(stream_id=1, description=description)]
    assert conn.dropped_media == 1
    last = client.receive(out)[-1]
    assert last.stream_id == 1
    assert last.values == [
        "onStatus",
        0.0,
        None,
        status("error", "NetStream.Publish.Rejected", description),
    ]


@pytest.mark.parametrize(
    ("payload", "kind", "description"),
    [
        (
            bytes.fromhex("90 68766331 00"),
            "video",
            "video codec HEVC (enhanced RTMP FourCC hvc1) is not supported; publish H.264",
        ),
        (
            bytes.fromhex("2f ff fb 90 00"),
            "audio",
            "audio codec MP3 (FLV sound format 2) is not supported; publish AAC",
        ),
    ],
)
def test_unsupported_codec_variants(payload: bytes, kind: str, description: str) -> None:
    client = Client()
    send = client.video if kind == "video" else client.audio
    conn = ServerConnection()
    events, out = drive(conn, [client.publish_prefix() + send(1, 0, payload)])
    assert events[-1] == MediaRejected(1, description)
    assert client.receive(out)[-1].values[3]["code"] == "NetStream.Publish.Rejected"  # type: ignore[index]


def test_reject_publish_on_an_accepted_stream() -> None:
    client = Client()
    conn = ServerConnection()
    publishing(client, conn)
    conn.reject_publish(1, "NetStream.Publish.Rejected", "bad video configuration")
    out = client.receive(conn.data_to_send())
    assert out[-1].values[3]["code"] == "NetStream.Publish.Rejected"  # type: ignore[index]
    conn.receive_data(client.video(1, 0, avc_sequence_header(AVCC)))
    conn.receive_data(b"")
    assert conn.events() == []  # media dropped, and no UnpublishRequest: the app ended it
    assert conn.dropped_media == 1


def test_eof_while_publishing_emits_unpublish() -> None:
    client = Client()
    conn = ServerConnection()
    drive(conn, [client.publish_prefix()])
    conn.receive_data(b"")
    assert conn.closed
    assert conn.events() == [UnpublishRequest(1)]
    conn.receive_data(b"more")  # ignored after close
    assert conn.events() == []


@pytest.mark.parametrize(
    "ending",
    [
        lambda c: c.command("closeStream", None, stream_id=1, txid=0),
        lambda c: c.command("deleteStream", None, 1.0, txid=0),
        lambda c: c.command("FCUnpublish", None, "key"),
    ],
    ids=["closeStream", "deleteStream", "FCUnpublish"],
)
def test_unpublish_commands(ending: Any) -> None:
    client = Client()
    conn = ServerConnection()
    events, _ = drive(conn, [client.publish_prefix("key"), ending(client)])
    assert events[-1] == UnpublishRequest(1)
    conn.receive_data(client.command("deleteStream", None, 1.0, txid=0))
    assert conn.events() == []  # only once per publish


def test_fc_unpublish_of_unknown_name_only_replies() -> None:
    client = Client()
    conn = ServerConnection()
    publishing(client, conn)
    conn.receive_data(client.command("FCUnpublish", None, "other"))
    assert conn.events() == []
    assert [r.name for r in client.receive(conn.data_to_send())] == ["_result"]


def test_polite_answers_to_other_commands() -> None:
    client = Client()
    conn = ServerConnection()
    publishing(client, conn)
    client.txid = 10
    conn.receive_data(
        client.command("getStreamLength", None, "key")
        + client.command("_checkbw", None)
        + client.command("checkBandwidth", None)
        + client.command("someUnknownCommand", None, 1.0)
        + client.command("unknownWithoutTransaction", None, txid=0)
        + client.command("_result", None, txid=5)  # a reply from the client: not answered
        + client.command("play", None, "x", stream_id=1, txid=0)
    )
    replies = client.receive(conn.data_to_send())
    assert [r.values for r in replies[:4]] == [
        ["_result", 11.0, None, 0.0],  # getStreamLength: a number, as ffmpeg expects
        *(["_result", float(n), None, UNDEFINED] for n in (12, 13, 14)),
    ]
    assert replies[4].values is not None and replies[4].stream_id == 1
    assert replies[4].values[3]["code"] == "NetStream.Play.Failed"
    assert len(replies) == 5
    assert conn.events() == []


def test_amf3_command_and_data_messages() -> None:
    client = Client()
    conn = ServerConnection()
    connect = b"\x00" + amf0.encode("connect", 1.0, {"app": "live", "tcUrl": "rtmp://h/live"})
    data = client.handshake() + client.message(MessageType.COMMAND_AMF3, connect, csid=CSID_COMMAND)
    events, out = drive(conn, [data])
    assert events == [
        ConnectRequest("live", "rtmp://h/live", {"app": "live", "tcUrl": "rtmp://h/live"})
    ]
    assert client.receive(out)[-1].name == "_result"
    rest = (
        client.command("createStream", None)
        + client.command("publish", None, "k", "live", stream_id=1)
        + client.message(
            MessageType.DATA_AMF3,
            b"\x00" + amf0.encode("onMetaData", {"width": 1.0}),
            stream_id=1,
            csid=5,
        )
    )
    events, _ = drive(conn, [rest])
    assert events[-1] == MetaData(1, {"width": 1.0})


def test_malformed_metadata_is_ignored_not_fatal() -> None:
    client = Client()
    conn = ServerConnection()
    drive(conn, [client.publish_prefix()])
    bad = client.message(MessageType.DATA_AMF0, b"\x02\x00\x09onMeta", stream_id=1, csid=5)
    other = client.message(
        MessageType.DATA_AMF0, amf0.encode("onTextData", {"text": "hi"}), stream_id=1, csid=5
    )
    conn.receive_data(bad + other)
    assert conn.events() == []
    assert conn.ignored_messages == 2


def test_ping_request_gets_ping_response() -> None:
    client = Client()
    conn = ServerConnection()
    publishing(client, conn)
    conn.receive_data(
        client.message(MessageType.USER_CONTROL, bytes.fromhex("0006 12345678"), csid=2)
        + client.message(MessageType.USER_CONTROL, bytes.fromhex("0003 00000001 00000bb8"), csid=2)
    )
    assert simplify(client.receive(conn.data_to_send())) == [
        (MessageType.USER_CONTROL, 0, bytes.fromhex("0007 12345678"))
    ]


def test_acknowledgements_follow_the_peer_window() -> None:
    client = Client()
    conn = ServerConnection()
    publishing(client, conn)
    conn.receive_data(
        client.message(MessageType.WINDOW_ACK_SIZE, (5000).to_bytes(4, "big"), csid=2)
    )
    assert conn.data_to_send() == b""  # nothing to acknowledge yet
    acks: list[int] = []
    frame = client.video(1, 0, avc_nalu(bytes(1500), keyframe=True))
    for _ in range(10):
        conn.receive_data(frame)
        acks += [
            int.from_bytes(r.payload, "big")
            for r in client.receive(conn.data_to_send())
            if r.type_id == MessageType.ACKNOWLEDGEMENT
        ]
    assert len(acks) == 3  # ~15 KB after a 5000-byte window, plus what preceded it
    assert acks[-1] <= conn.bytes_received
    assert all(b - a >= 5000 for a, b in zip(acks, acks[1:], strict=False))


def test_timestamps_are_unwrapped_past_32_bits() -> None:
    client = Client()
    conn = ServerConnection()
    stamps = [0xFFFFFF00, 0xFFFFFFF0, 0x10, 0x100, 0x80000000, 0xFFFFFF00, 0x20]
    data = client.publish_prefix() + b"".join(
        client.video(1, ts, avc_nalu(NALUS, keyframe=False, cts=5)) for ts in stamps
    )
    events, _ = drive(conn, [data])
    frames = [e for e in events if isinstance(e, VideoFrame)]
    wrap = 1 << 32
    assert [f.dts for f in frames] == [
        0xFFFFFF00,
        0xFFFFFFF0,
        wrap + 0x10,
        wrap + 0x100,
        wrap + 0x80000000,
        wrap + 0xFFFFFF00,
        2 * wrap + 0x20,
    ]
    assert [f.pts - f.dts for f in frames] == [5] * len(stamps)


def test_ffmpeg_31_bit_timestamp_wrap_is_unwrapped() -> None:
    # ffmpeg writes FLV timestamps as signed 32-bit, so over RTMP they wrap at 2**31.
    client = Client()
    conn = ServerConnection()
    stamps = [0x7FFFFFB0, 0x7FFFFFF0, 0x20, 0x40]
    data = client.publish_prefix() + b"".join(client.audio(1, ts, aac_raw(b"a")) for ts in stamps)
    events, _ = drive(conn, [data])
    assert [e.timestamp for e in events if isinstance(e, AudioFrame)] == [
        0x7FFFFFB0,
        0x7FFFFFF0,
        (1 << 31) + 0x20,
        (1 << 31) + 0x40,
    ]


def test_sequence_headers_at_zero_do_not_anchor_the_unwrapping() -> None:
    # ffmpeg sends sequence headers at time 0 even when media starts near the wrap.
    client = Client()
    conn = ServerConnection()
    data = (
        client.publish_prefix()
        + client.video(1, 0, avc_sequence_header(AVCC))
        + client.audio(1, 0, aac_sequence_header(ASC))
        + b"".join(
            client.video(1, ts, avc_nalu(NALUS, keyframe=True)) for ts in (0xFFFFFF00, 0x10, 0x1000)
        )
    )
    events, _ = drive(conn, [data])
    times = [(type(e).__name__, getattr(e, "timestamp", getattr(e, "dts", None))) for e in events]
    assert times[2:] == [
        ("VideoSequenceHeader", 0),
        ("AudioSequenceHeader", 0),
        ("VideoFrame", 0xFFFFFF00),
        ("VideoFrame", (1 << 32) + 0x10),
        ("VideoFrame", (1 << 32) + 0x1000),
    ]


def test_small_backward_steps_are_not_mistaken_for_wraps() -> None:
    client = Client()
    conn = ServerConnection()
    data = client.publish_prefix() + b"".join(
        client.audio(1, ts, aac_raw(b"a")) for ts in (1000, 990, 1010, 0, 0x7FFFFFFF, 5)
    )
    events, _ = drive(conn, [data])
    assert [e.timestamp for e in events if isinstance(e, AudioFrame)] == [
        1000,
        990,
        1010,
        0,  # a reset to zero is a step back, not a wrap
        -1,  # 0x7FFFFFFF right after 0: one step back under the 2**31 reading
        5,
    ]


def test_aggregate_message() -> None:
    def tag(type_id: int, ts: int, body: bytes) -> bytes:
        header = bytes([type_id]) + len(body).to_bytes(3, "big") + ts.to_bytes(3, "big")
        return header + b"\x00" + b"\x00\x00\x00" + body + (11 + len(body)).to_bytes(4, "big")

    client = Client()
    conn = ServerConnection()
    aggregate = tag(9, 500, avc_sequence_header(AVCC)) + tag(8, 520, aac_raw(b"x"))
    data = client.publish_prefix() + client.message(
        MessageType.AGGREGATE, aggregate, stream_id=1, timestamp=1000, csid=CSID_VIDEO
    )
    events, _ = drive(conn, [data])
    assert events[2:] == [VideoSequenceHeader(1, 1000, AVCC), AudioFrame(1, 1020, b"x")]
    with pytest.raises(ProtocolError, match="truncated FLV tag"):
        conn.receive_data(
            client.message(MessageType.AGGREGATE, aggregate[:-1], stream_id=1, csid=CSID_VIDEO)
        )


def test_create_stream_limit() -> None:
    client = Client()
    conn = ServerConnection(Limits(max_message_streams=2))
    data = (
        client.handshake()
        + client.connect()
        + b"".join(client.command("createStream", None) for _ in range(3))
    )
    with pytest.raises(ProtocolError, match=r"too many streams created \(limit 2\)"):
        drive(conn, [data])


def test_accept_without_request_is_a_usage_error() -> None:
    conn = ServerConnection()
    with pytest.raises(RuntimeError, match="no connect request is pending"):
        conn.accept_connect()
    with pytest.raises(RuntimeError, match="no publish request is pending on stream 1"):
        conn.accept_publish(1)


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda c: b"\x06" + bytes(HANDSHAKE_SIZE), HandshakeError, "unsupported RTMP version 6"),
        (lambda c: b"GET / HTTP/1.1\r\n", HandshakeError, "looks like a text protocol"),
        (
            lambda c: c.handshake() + c.message(1, (0x80000000).to_bytes(4, "big"), csid=2),
            ChunkError,
            "chunk size 2147483648 exceeds limit 65536",
        ),
        (
            lambda c: c.handshake() + bytes.fromhex("03 000000 ffffff 14 00000000"),
            ChunkError,
            "message length 16777215 exceeds limit 1048576",
        ),
        (
            lambda c: (
                c.handshake() + b"".join(c.message(3, b"", csid=csid) for csid in range(2, 67))
            ),
            ChunkError,
            r"too many chunk streams \(limit 64\)",
        ),
        (
            lambda c: c.handshake() + b"hello, this is not RTMP at all",
            ChunkError,
            "chunk stream 40: first chunk has header format 1 without a previous format-0",
        ),
        (
            lambda c: c.handshake() + c.command("createStream", None),
            ProtocolError,
            "command 'createStream' received before connect",
        ),
        (
            lambda c: c.handshake() + c.message(20, amf0.encode(1.0, 2.0), csid=3),
            ProtocolError,
            "does not start with a command name",
        ),
        (
            lambda c: c.handshake() + c.message(20, b"\x02\x00\x07conn", csid=3),
            amf0.AMF0DecodeError,
            "truncated AMF0 string",
        ),
        (
            lambda c: c.publish_prefix() + c.video(1, 0, bytes.fromhex("17 01")),
            ProtocolError,
            "truncated AVC video tag",
        ),
        (
            lambda c: c.handshake() + c.connect() + c.command("publish", None, "k", stream_id=3),
            ProtocolError,
            "publish on message stream 3, which was not created",
        ),
        (
            lambda c: c.publish_prefix() + c.command("publish", None, "k", stream_id=1),
            ProtocolError,
            "stream 1, which is already publishing",
        ),
        (
            lambda c: c.publish_prefix() + c.message(4, b"\x00", csid=2),
            ProtocolError,
            "truncated User Control",
        ),
        (
            lambda c: c.publish_prefix() + c.message(5, b"\x00", csid=2),
            ProtocolError,
            "truncated Window Acknowledgement Size",
        ),
        (
            lambda c: c.publish_prefix() + c.connect(),
            ProtocolError,
            "duplicate connect",
        ),
    ],
)
def test_bad_input(make: Any, error: type[Exception], message: str) -> None:
    data = make(Client())
    for pieces in ([data], byte_by_byte(data)):
        conn = ServerConnection(Limits(max_message_size=1 << 20))
        with pytest.raises(error, match=message):
            drive(conn, pieces)
        assert conn.closed
        assert conn.buffered_bytes <= max_buffered_bytes(conn.limits)


def test_buffered_bytes_cap() -> None:
    limits = Limits()
    assert max_buffered_bytes(limits) == 1536 + 18 + limits.max_message_size + (4 << 20)


def test_connect_properties_with_odd_types() -> None:
    client = Client()
    conn = ServerConnection()
    data = client.handshake() + client.command("connect", {"app": 5.0, "tcUrl": None, "x": []})
    events, _ = drive(conn, [data], accept=False)
    assert events == [ConnectRequest("", "", {"app": 5.0, "tcUrl": None, "x": []})]
    data = client.command("connect", None)
    conn = ServerConnection()
    events, _ = drive(conn, [client.handshake() + data], accept=False)
    assert events == [ConnectRequest("", "", {})]


def test_metadata_ecma_array_becomes_plain_dict() -> None:
    client = Client()
    conn = ServerConnection()
    meta = client.message(
        MessageType.DATA_AMF0,
        amf0.encode("onMetaData", ECMAArray({"duration": 0.0})),
        stream_id=1,
        csid=5,
    )
    events, _ = drive(conn, [client.publish_prefix() + meta])
    assert events[-1] == MetaData(1, {"duration": 0.0})
    assert type(events[-1].data) is dict  # type: ignore[union-attr]
