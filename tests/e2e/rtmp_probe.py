"""Publish attempts over real sockets, from a chosen loopback address, with the test
RTMP client (``tests/ingest/rtmp/rtmpclient.py``): handshake, connect, createStream,
publish, then the server's verdict — ``NetStream.Publish.Start`` or the refusal's code
and description. Every wait has a deadline."""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass

from tests.ingest.rtmp.rtmpclient import Client


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    code: str
    description: str


def connect_from(port: int, source: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


def probe_publish(port: int, name: str, source: str = "127.0.0.1", tls: ssl.SSLContext | None = None,
                  timeout: float = 10.0) -> Verdict:  # fmt: skip
    client = Client()
    raw = connect_from(port, source, timeout)
    sock: socket.socket = tls.wrap_socket(raw, server_hostname="localhost") if tls else raw
    with sock:
        sock.sendall(client.publish_prefix(name))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return Verdict(False, "reset", "")
            if not data:
                return Verdict(False, "closed", "")
            for reply in client.receive(data):
                values = reply.values or []
                info = values[3] if len(values) > 3 and isinstance(values[3], dict) else {}
                if reply.name == "_error":
                    return Verdict(False, str(info.get("code")), str(info.get("description")))
                if reply.name == "onStatus":
                    code = str(info.get("code"))
                    return Verdict(code == "NetStream.Publish.Start", code, str(info.get("description")))
    raise AssertionError(f"no verdict on publishing {name[:20]!r} within {timeout} s")
