"""The server handshake: C0/C1 in, S0+S1+S2 out, any C2 accepted, leftovers handed back."""

from __future__ import annotations

import pytest

from tidecast.ingest import ProtocolError
from tidecast.ingest.rtmp.handshake import (
    HANDSHAKE_SIZE,
    HandshakeError,
    HandshakeState,
    ServerHandshake,
)

C1 = bytes((i * 7) & 0xFF for i in range(HANDSHAKE_SIZE))
C2 = b"\x5a" * HANDSHAKE_SIZE
RANDOM = bytes(range(8)) * 191  # 1528 bytes


def fixed_random(n: int) -> bytes:
    assert n == 1528
    return RANDOM


def test_handshake_in_one_piece() -> None:
    hs = ServerHandshake(random_bytes=fixed_random, time_ms=0x01020304)
    rest = hs.receive_data(b"\x03" + C1 + C2 + b"chunk stream")
    assert rest == b"chunk stream"
    assert hs.complete
    out = hs.data_to_send()
    assert len(out) == 1 + 2 * HANDSHAKE_SIZE
    assert out[0] == 3  # S0
    s1 = out[1 : 1 + HANDSHAKE_SIZE]
    assert s1[:4] == b"\x01\x02\x03\x04"  # time
    assert s1[4:8] == b"\x00\x00\x00\x00"  # zero: simple handshake, no digest for ffmpeg
    assert s1[8:] == RANDOM
    assert out[1 + HANDSHAKE_SIZE :] == C1  # S2 echoes C1
    assert hs.data_to_send() == b""


def test_handshake_byte_by_byte() -> None:
    hs = ServerHandshake(random_bytes=fixed_random)
    data = b"\x03" + C1 + C2
    out = bytearray()
    for i in range(len(data)):
        assert not hs.complete
        assert hs.receive_data(data[i : i + 1]) == b""
        assert hs.buffered_bytes <= HANDSHAKE_SIZE
        out += hs.data_to_send()
        if i < HANDSHAKE_SIZE:
            assert out == b""  # nothing is sent before C1 is complete
    assert hs.complete
    assert out[1 + HANDSHAKE_SIZE :] == C1
    assert hs.buffered_bytes == 0


def test_states_and_s1_sent_before_c2() -> None:
    hs = ServerHandshake()
    assert hs.state is HandshakeState.WAIT_C0
    hs.receive_data(b"\x03")
    assert hs.state is HandshakeState.WAIT_C1
    hs.receive_data(C1)
    assert hs.state is HandshakeState.WAIT_C2
    s0s1s2 = hs.data_to_send()
    assert len(s0s1s2) == 1 + 2 * HANDSHAKE_SIZE
    assert s0s1s2[5:9] == b"\x00\x00\x00\x00"
    assert hs.receive_data(C2[:100]) == b""
    assert hs.receive_data(C2[100:] + b"x") == b"x"
    assert hs.state is HandshakeState.DONE


def test_random_s1_differs_between_connections() -> None:
    outs = []
    for _ in range(2):
        hs = ServerHandshake()
        hs.receive_data(b"\x03" + C1)
        outs.append(hs.data_to_send()[9 : 1 + HANDSHAKE_SIZE])
    assert outs[0] != outs[1]


@pytest.mark.parametrize(
    ("c0", "message"),
    [
        (b"\x06", r"unsupported RTMP version 6 in C0 \(expected 3\) \(encrypted RTMPE"),
        (b"\x00", r"unsupported RTMP version 0 in C0 \(expected 3\)"),
        (b"G", r"version 71 .*looks like a text protocol such as HTTP"),
        (b"\x16", r"TLS ClientHello"),
        (b"\xff", r"unsupported RTMP version 255"),
    ],
)
def test_bad_c0_version(c0: bytes, message: str) -> None:
    hs = ServerHandshake()
    with pytest.raises(HandshakeError, match=message) as info:
        hs.receive_data(c0 + C1)
    assert isinstance(info.value, ProtocolError)
    assert hs.data_to_send() == b""
