"""The fault proxy itself: its HTTP request splitter (sans-I/O), each mode against a tiny
real HTTP server started here, and the three faults the store tests rely on, through
the proxy to the S3 API server (moto's, its own process) with boto3."""

from __future__ import annotations

import asyncio
import http.client
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.faultproxy import FaultProxy, ProxyProtocolError, RequestSplitter, RequestStart
from tests.services import free_port, s3_server
from tidecast.metrics import Registry
from tidecast.store.retrying import RetryingStore, StoreRetry
from tidecast.store.s3 import S3Store

# -- the splitter ----------------------------------------------------------------------

STREAM = (
    b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    b"PUT /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
    b"\r\n"  # an empty line between requests is allowed
    b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n"
    b"DELETE /d?x=1 HTTP/1.0\r\ncontent-length: 0\r\n\r\n"
)
STARTS = [RequestStart("GET", "/a"), RequestStart("PUT", "/b"), RequestStart("POST", "/c"),
          RequestStart("DELETE", "/d?x=1")]  # fmt: skip


def split(chunks: list[bytes]) -> tuple[list[RequestStart], bytes]:
    s = RequestSplitter()
    pieces = [p for c in chunks for p in s.feed(c)]
    return [st for st, _ in pieces if st is not None], b"".join(b for _, b in pieces)


def test_splitter_finds_every_request_start_whole_or_byte_by_byte() -> None:
    assert split([STREAM]) == (STARTS, STREAM)
    assert split([STREAM[i : i + 1] for i in range(len(STREAM))]) == (STARTS, STREAM)
    assert split([STREAM[:40], STREAM[40:41], STREAM[41:]]) == (STARTS, STREAM)


def test_a_body_that_looks_like_a_request_is_not_one() -> None:
    body = b"GET /fake HTTP/1.1\r\n\r\n"
    data = b"PUT /x HTTP/1.1\r\nContent-Length: %d\r\n\r\n%sGET /y HTTP/1.1\r\n\r\n" % (len(body), body)
    assert split([data])[0] == [RequestStart("PUT", "/x"), RequestStart("GET", "/y")]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x16\x03\x01 tls hello\r\n\r\n", "not an HTTP/1.x request line"),
        (b"GET / HTTP/2\r\n\r\n", "not an HTTP/1.x request line"),
        (b"PUT / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "bad Content-Length"),
        (b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
        (b"PUT / HTTP/1.1\r\nno colon\r\n\r\n", "bad header line"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * (70 * 1024), "head over"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * (9 * 1024), "chunk line over"),
    ],
)
def test_splitter_refuses_what_it_cannot_follow(data: bytes, error: str) -> None:
    with pytest.raises(ProxyProtocolError, match=error):
        RequestSplitter().feed(data)


# -- a tiny real HTTP server -----------------------------------------------------------


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    seen: list[tuple[str, str, bytes]] = []

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            out = b""
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                out += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                continue
            return out
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _answer(self) -> None:
        body = self._body()
        type(self).seen.append((self.command, self.path, body))
        reply = f"{self.command} {self.path} {len(body)}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_PUT = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        return  # the test reads `seen`, not a log


Served = tuple[int, list[tuple[str, str, bytes]]]  # the port, and each request it answered


@pytest.fixture
def http_server() -> Iterator[Served]:
    seen: list[tuple[str, str, bytes]] = []
    handler = type("Handler", (Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()
    thread.join(5)


RESET = (ConnectionResetError, BrokenPipeError)  # a TCP RST, seen at connect, send or receive


def exchange(port: int, data: bytes) -> None:
    """Connect, send ``data``, read until the end of the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        while s.recv(100):
            continue


def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
            chunked: bool = False) -> str:  # fmt: skip
    if chunked:
        conn.request(method, path, body=iter([body or b""]), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})  # fmt: skip
    else:
        conn.request(method, path, body=body)
    return conn.getresponse().read().decode()


def test_pass_forwards_keep_alive_requests_and_counts_them(http_server: Served) -> None:
    port, seen = http_server
    with FaultProxy(("127.0.0.1", port)) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        assert request(conn, "GET", "/a") == "GET /a 0"
        assert request(conn, "PUT", "/b", b"x" * 100_000) == "PUT /b 100000"
        assert request(conn, "POST", "/c", b"chunky", chunked=True) == "POST /c 6"
        conn.close()
        stats = proxy.stats()
    assert stats.connections == 1 and stats.requests == {"GET": 1, "PUT": 1, "POST": 1}
    assert seen[2] == ("POST", "/c", b"chunky")


def test_refuse_cuts_open_connections_and_resets_new_ones(http_server: Served) -> None:
    port, _ = http_server
    with FaultProxy(("127.0.0.1", port)) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        assert request(conn, "GET", "/before") == "GET /before 0"
        proxy.refuse()
        time.sleep(0.1)
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            request(conn, "GET", "/on-the-cut-one")
        conn.close()
        with pytest.raises(RESET):
            exchange(proxy.port, b"GET /new HTTP/1.1\r\n\r\n")
        stats = proxy.stats()
        assert stats.cut == 1 and stats.refused >= 1
        proxy.pass_through()
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        assert request(conn, "GET", "/after") == "GET /after 0"
        conn.close()


def test_delay_holds_every_nth_request_of_one_method(http_server: Served) -> None:
    port, _ = http_server
    with FaultProxy(("127.0.0.1", port)) as proxy:
        proxy.delay("PUT", every=3, seconds=0.3)
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        took = []
        for i in range(6):
            assert request(conn, "GET", f"/g{i}") == f"GET /g{i} 0"
            started = time.monotonic()
            request(conn, "PUT", f"/p{i}", b"data")
            took.append(time.monotonic() - started)
        conn.close()
        stats = proxy.stats()
    assert took[2] >= 0.29 and took[5] >= 0.29, took  # the 3rd and 6th PUT were held 0.3 s
    fast = sorted(t for i, t in enumerate(took) if i not in (2, 5))
    assert fast[len(fast) // 2] < 0.15, took  # the others were not
    assert stats.delayed == 2 and stats.requests == {"GET": 6, "PUT": 6}


def test_hold_keeps_matching_requests_in_flight_until_released(http_server: Served) -> None:
    port, seen = http_server
    with FaultProxy(("127.0.0.1", port)) as proxy:
        proxy.hold("PUT", "/playlist")
        answers: list[str] = []
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        writer = threading.Thread(target=lambda: answers.append(request(conn, "PUT", "/live/playlist.m3u8", b"p")))
        writer.start()
        assert proxy.wait_held(5), "the PUT was not held"
        other = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        assert request(other, "PUT", "/live/segment.m4s", b"s") == "PUT /live/segment.m4s 1"  # no match
        assert request(other, "GET", "/live/playlist.m3u8") == "GET /live/playlist.m3u8 0"
        other.close()
        time.sleep(0.2)
        assert [p for _, p, _ in seen] == ["/live/segment.m4s", "/live/playlist.m3u8"], "a held byte leaked"
        assert not answers
        proxy.release()
        writer.join(5)
        conn.close()
        assert answers == ["PUT /live/playlist.m3u8 1"]
        assert proxy.stats().held == 1


def test_hold_ends_at_its_limit(http_server: Served) -> None:
    port, _ = http_server
    with FaultProxy(("127.0.0.1", port), hold_limit=0.3) as proxy:
        proxy.hold("GET")
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        started = time.monotonic()
        assert request(conn, "GET", "/x") == "GET /x 0"
        assert 0.25 < time.monotonic() - started < 3
        conn.close()
        assert proxy.stats().hold_expired == 1


def test_what_is_not_http_is_cut_with_the_reason(http_server: Served) -> None:
    port, seen = http_server
    with FaultProxy(("127.0.0.1", port)) as proxy:
        with pytest.raises(RESET):
            exchange(proxy.port, b"SSH-2.0-hello\r\n\r\n")
        assert "not an HTTP/1.x request line" in proxy.stats().protocol_errors[0]
    assert not seen


def test_loopback_only_and_a_dead_target_resets() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy(("10.1.2.3", 80))
    with FaultProxy(("127.0.0.1", free_port())) as proxy, pytest.raises(RESET):
        exchange(proxy.port, b"GET / HTTP/1.1\r\n\r\n")


# -- through the proxy to the S3 API server -------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(s3_endpoint) as p:
        yield p


def s3_via(url: str, bucket: str) -> S3Store:
    return S3Store(bucket, endpoint_url=url, access_key="test", secret_key="test", prefix="media")


async def test_s3_refused_for_a_second_then_back_a_retrying_put_succeeds(proxy: FaultProxy) -> None:
    s3 = s3_via(proxy.url, "tidecast-" + secrets.token_hex(4))
    await s3.ensure_bucket()
    reg = Registry()
    store = RetryingStore(s3, StoreRetry(deadline=10.0), registry=reg)
    proxy.refuse()
    loop = asyncio.get_running_loop()
    loop.call_later(1.0, proxy.pass_through)
    started = loop.time()
    await store.put("hls/s/b/720p/000001.m4s", b"segment")
    assert loop.time() - started >= 0.9
    assert await s3.get("hls/s/b/720p/000001.m4s") == b"segment"
    assert reg.counter("tidecast_store_retries_total", "", ("op",)).value(op="put") >= 2
    assert proxy.stats().refused >= 2


async def test_s3_every_third_put_delayed(proxy: FaultProxy) -> None:
    s3 = s3_via(proxy.url, "tidecast-" + secrets.token_hex(4))
    await s3.ensure_bucket()
    before = proxy.stats().requests
    proxy.delay("PUT", every=3, seconds=0.5)
    loop = asyncio.get_running_loop()
    took = []
    for i in range(6):
        started = loop.time()
        await s3.put(f"hls/s/b/720p/{i:06d}.m4s", b"x" * 1000)
        took.append(loop.time() - started)
        assert await s3.get(f"hls/s/b/720p/{i:06d}.m4s") == b"x" * 1000  # GETs are not delayed
    assert took[2] >= 0.49 and took[5] >= 0.49, took  # the 3rd and 6th PUT were held 0.5 s
    fast = sorted(t for i, t in enumerate(took) if i not in (2, 5))
    assert fast[len(fast) // 2] < 0.25, took  # the others were not
    stats = proxy.stats()
    assert stats.delayed == 2 and stats.requests - before == {"PUT": 6, "GET": 6}


async def test_s3_a_held_conditional_put_fails_when_another_writer_got_in(
    proxy: FaultProxy, s3_endpoint: str
) -> None:
    bucket = "tidecast-" + secrets.token_hex(4)
    direct = s3_via(s3_endpoint, bucket)
    await direct.ensure_bucket()
    key = "hls/s/720p.m3u8"
    version = await direct.put_if(key, b"epoch=1 #1", None)
    stale = s3_via(proxy.url, bucket)
    proxy.hold("PUT", "720p.m3u8")
    in_flight = asyncio.create_task(stale.put_if(key, b"epoch=1 #2", version))
    assert await proxy.held(5), "the PUT was not held"
    newer = await direct.put_if(key, b"epoch=2 #1", version)  # a new leader writes meanwhile
    assert newer is not None
    proxy.release()
    assert await asyncio.wait_for(in_flight, 10) is None, "the held write must fail its precondition"
    assert await direct.get_versioned(key) == (b"epoch=2 #1", newer)
