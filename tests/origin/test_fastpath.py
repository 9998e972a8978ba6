"""The origin's sendfile fast path over raw sockets, against a real server: pipelined
requests, the hand-over of a keep-alive connection to the app, ranges, HEAD, 304,
bad paths, clients that go away mid-body or read slowly."""

from __future__ import annotations

import os
import socket
import time

import httpx
import pytest
from tests.conftest import TidecastServer

pytestmark = pytest.mark.e2e


def put(server: TidecastServer, rel: str, data: bytes) -> None:
    path = server.data_dir / "media" / "hls" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def read_response(f: socket.SocketIO | object, head: bool = False) -> tuple[int, dict[str, str], bytes]:
    rf = f  # a buffered reader over the socket
    status = rf.readline()  # type: ignore[attr-defined]
    assert status.startswith(b"HTTP/1.1 "), status
    headers: dict[str, str] = {}
    while (line := rf.readline()) not in (b"\r\n", b""):  # type: ignore[attr-defined]
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    n = 0 if head else int(headers.get("content-length", "0"))
    body = rf.read(n) if n else b""  # type: ignore[attr-defined]
    return int(status.split()[1]), headers, body


def connect(server: TidecastServer) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
    return s


def test_pipelined_requests_then_the_app_on_one_connection(server: TidecastServer) -> None:
    data = os.urandom(300_000)
    put(server, "fp/b1/source/000001.m4s", data)
    put(server, "fp/source.m3u8", b"#EXTM3U\n#EXT-X-ENDLIST\n")
    seg = "/hls/fp/b1/source/000001.m4s"
    with connect(server) as s, s.makefile("rb") as rf:
        s.sendall(
            f"GET {seg} HTTP/1.1\r\nHost: x\r\n\r\n"
            f"HEAD {seg} HTTP/1.1\r\nHost: x\r\n\r\n"
            f"GET {seg}?v=1 HTTP/1.1\r\nHost: x\r\nRange: bytes=10-19\r\n\r\n"
            f"GET /hls/fp/source.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n"
            f"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
            f"GET {seg} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        st, h, body = read_response(rf)
        assert st == 200 and body == data and h["content-type"] == "video/iso.segment"
        assert h["access-control-allow-origin"] == "*" and "immutable" in h["cache-control"]
        etag = h["etag"]
        st, h, body = read_response(rf, head=True)
        assert st == 200 and h["content-length"] == str(len(data)) and h["etag"] == etag
        st, h, body = read_response(rf)
        assert st == 206 and body == data[10:20] and h["content-range"] == f"bytes 10-19/{len(data)}"
        st, h, body = read_response(rf)
        assert st == 200 and body.endswith(b"#EXT-X-ENDLIST\n") and h["cache-control"] == "public, max-age=30"
        st, h, body = read_response(rf)  # the app answers on the same connection
        assert st == 200 and b'"status":"ok"' in body
        st, h, body = read_response(rf)  # and keeps serving it after the hand-over
        assert st == 200 and body == data
    with connect(server) as s, s.makefile("rb") as rf:
        s.sendall(f"GET {seg} HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n".encode())
        st, h, body = read_response(rf)
        assert st == 304 and body == b"" and h.get("connection") == "close"
        assert rf.read() == b""  # closed as asked


def test_bad_and_missing_paths(server: TidecastServer) -> None:
    with connect(server) as s, s.makefile("rb") as rf:
        for raw, want in [("/hls/..%2f..%2fetc/passwd", 400), ("/hls/a/../../x.m4s", 400),
                          ("/hls/nope/000001.m4s", 404), ("/hls/fp/x.exe", 404), ("/hls/", 400)]:  # fmt: skip
            s.sendall(f"GET {raw} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            st, h, body = read_response(rf)
            assert st == want, (raw, st, body)
            assert h["content-type"] == "application/json" and b"detail" in body
    assert httpx.get(f"{server.http}/api/v1/health").status_code == 200


def test_clients_that_vanish_or_crawl_do_not_hold_up_others(server: TidecastServer) -> None:
    big = os.urandom(24 << 20)  # more than the kernel buffers both sides: the send must wait
    put(server, "fp/b1/source/000002.m4s", big)
    url = "/hls/fp/b1/source/000002.m4s"
    for _ in range(20):  # ask for a big body and hang up at once
        s = connect(server)
        s.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        s.recv(1000)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
        s.close()
    slow = connect(server)
    slow.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    slow.recv(1000)  # then stop reading: the server's send blocks on this socket only
    t0 = time.monotonic()
    time.sleep(0.5)
    for _ in range(5):
        r = httpx.get(f"{server.http}{url}", timeout=10)
        assert r.status_code == 200 and r.content == big
    assert time.monotonic() - t0 < 20
    got = 1000
    slow.settimeout(10)
    while got < len(big):  # the slow one still gets all of it
        chunk = slow.recv(1 << 20)
        assert chunk, "the slow client was cut off"
        got += len(chunk)
    slow.close()
    assert server.alive()
