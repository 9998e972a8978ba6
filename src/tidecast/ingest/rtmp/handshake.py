"""The server side of the RTMP handshake, as a sans-I/O state machine.

This module owns the exchange that precedes the chunk stream (RTMP spec,
section 5.2): read C0 (the version byte, must be 3) and C1 (1536 bytes), then
send S0 + S1 + S2 in one go, then read C2 (1536 bytes, any content accepted, as
ffmpeg and OBS expect).

We always perform the *simple* handshake. S1 is a 4-byte time, 4 zero bytes and
1528 random bytes: the zero "version" in bytes 4..7 tells clients such as
ffmpeg not to validate a digest (they only do so when those bytes hold a
version >= 3). S2 echoes C1.

The machine never buffers more than one handshake packet (1536 bytes).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from typing import Final

from tidecast.ingest import ProtocolError

__all__ = ["HANDSHAKE_SIZE", "RTMP_VERSION", "HandshakeError", "HandshakeState", "ServerHandshake"]

RTMP_VERSION: Final = 3
HANDSHAKE_SIZE: Final = 1536
_RANDOM_SIZE: Final = HANDSHAKE_SIZE - 8


class HandshakeError(ProtocolError):
    """The client's handshake is invalid (e.g. an unsupported version in C0)."""


class HandshakeState(enum.Enum):
    WAIT_C0 = "wait-c0"
    WAIT_C1 = "wait-c1"
    WAIT_C2 = "wait-c2"
    DONE = "done"


def _describe_version(version: int) -> str:
    hint = ""
    if version == 6:
        hint = " (encrypted RTMPE is not supported)"
    elif 0x41 <= version <= 0x5A or 0x61 <= version <= 0x7A:
        hint = f" ({chr(version)!r}: looks like a text protocol such as HTTP, not RTMP)"
    elif version == 0x16:
        hint = " (looks like a TLS ClientHello; RTMPS is not supported on this port)"
    return f"unsupported RTMP version {version} in C0 (expected {RTMP_VERSION}){hint}"


class ServerHandshake:
    """Feed client bytes with :meth:`receive_data`; send what :meth:`data_to_send` returns.

    ``random_bytes`` and ``time_ms`` exist so tests can make S1 deterministic.
    """

    def __init__(
        self,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
        time_ms: int = 0,
    ) -> None:
        self._random_bytes = random_bytes
        self._time_ms = time_ms & 0xFFFFFFFF
        self._state = HandshakeState.WAIT_C0
        self._c1 = bytearray()
        self._c2_left = HANDSHAKE_SIZE
        self._out = bytearray()

    @property
    def state(self) -> HandshakeState:
        return self._state

    @property
    def complete(self) -> bool:
        return self._state is HandshakeState.DONE

    @property
    def buffered_bytes(self) -> int:
        """Bytes held while waiting for the rest of C1 (never more than 1536)."""
        return len(self._c1)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> bytes:
        """Consume handshake bytes; return whatever follows the handshake (the chunk stream).

        Raises :class:`HandshakeError` on a bad C0.
        """
        view = memoryview(data)
        pos = 0
        end = len(view)
        while pos < end and self._state is not HandshakeState.DONE:
            if self._state is HandshakeState.WAIT_C0:
                version = view[pos]
                pos += 1
                if version != RTMP_VERSION:
                    raise HandshakeError(_describe_version(version))
                self._state = HandshakeState.WAIT_C1
            elif self._state is HandshakeState.WAIT_C1:
                take = min(HANDSHAKE_SIZE - len(self._c1), end - pos)
                self._c1 += view[pos : pos + take]
                pos += take
                if len(self._c1) == HANDSHAKE_SIZE:
                    self._send_s0_s1_s2()
                    self._state = HandshakeState.WAIT_C2
            else:  # WAIT_C2: any content is accepted, so only count it
                take = min(self._c2_left, end - pos)
                pos += take
                self._c2_left -= take
                if self._c2_left == 0:
                    self._state = HandshakeState.DONE
        return bytes(view[pos:])

    def _send_s0_s1_s2(self) -> None:
        random = self._random_bytes(_RANDOM_SIZE)
        if len(random) != _RANDOM_SIZE:
            raise ValueError("random_bytes returned the wrong number of bytes")
        self._out.append(RTMP_VERSION)  # S0
        self._out += self._time_ms.to_bytes(4, "big")  # S1: time
        self._out += b"\x00\x00\x00\x00"  # S1: zero => simple handshake, no digest
        self._out += random
        self._out += self._c1  # S2: echo of C1
        self._c1 = bytearray()
