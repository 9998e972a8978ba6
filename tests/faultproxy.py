"""A TCP proxy for fault-injection tests: put it between a client and a real server.

The project injects faults only by stopping or pausing real components, or with
a proxy like this one in the test (loopback only). ``FaultProxy`` runs its own
asyncio loop in a background thread of the test process, listens on
127.0.0.1:<free port> and forwards to a target. Its mode is switched at run
time from the test's thread:

- ``pass_through()``: bytes flow both ways untouched (the start mode);
- ``refuse()``: new connections are reset at once and open ones are cut
  ("the store fails");
- ``delay(method, every, seconds)``: every ``every``-th HTTP request whose
  method is ``method`` (counted from this call) is held ``seconds`` before it is
  forwarded ("every third PUT takes 3 s");
- ``hold(method, path_contains)``: requests with that method whose target
  contains ``path_contains`` are not forwarded (not one byte) until
  ``release()`` or ``hold_limit`` seconds; ``wait_held`` / ``held`` wait until
  one is being held, so a test can keep a write "in flight".

To find requests it follows HTTP/1.1 on the client-to-server stream
(``RequestSplitter``: heads, Content-Length and chunked bodies, keep-alive and
pipelining); a stream that is not HTTP/1.x, or a head over 64 KiB, is cut with
the reason in ``stats().protocol_errors``. The server-to-client stream is copied
as is. ``stats()`` counts connections, requests by method, delayed, refused,
held and cut.

Usage::

    with FaultProxy(("127.0.0.1", s3_port)) as proxy:
        store = S3Store(bucket, endpoint_url=proxy.url, ...)
        proxy.refuse(); ...; proxy.pass_through()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit

log = logging.getLogger("tests.faultproxy")

MAX_HEAD = 64 * 1024
MAX_LINE = 8 * 1024
_REQUEST_LINE = re.compile(rb"^([A-Z]+) (\S+) HTTP/1\.[01]$")


class ProxyProtocolError(Exception):
    """The client-to-server stream is not HTTP/1.x the proxy can follow."""


@dataclass(frozen=True, slots=True)
class RequestStart:
    method: str
    target: str


def _parse_head(head: bytes) -> tuple[RequestStart, int, bool]:
    """The request line, Content-Length and whether the body is chunked."""
    lines = head[:-4].split(b"\r\n")
    m = _REQUEST_LINE.match(lines[0])
    if m is None:
        raise ProxyProtocolError(f"not an HTTP/1.x request line: {lines[0][:80]!r}")
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ProxyProtocolError(f"bad header line {line[:80]!r}")
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise ProxyProtocolError(f"bad Content-Length {value[:40]!r}")
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    return RequestStart(m[1].decode(), m[2].decode("latin-1")), length or 0, chunked


class RequestSplitter:
    """Sans-I/O: fed the client's bytes, returns them cut into pieces, each piece that
    begins a request paired with its ``RequestStart`` (else None). Concatenated, the
    pieces are exactly the bytes fed."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = "head"
        self._left = 0

    def _line(self) -> bytes | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > MAX_LINE:
                raise ProxyProtocolError(f"a chunk line over {MAX_LINE} bytes")
            return None
        line = bytes(self._buf[: end + 2])
        del self._buf[: end + 2]
        return line

    def _take(self) -> bytes:
        n = min(self._left, len(self._buf))
        piece = bytes(self._buf[:n])
        del self._buf[:n]
        self._left -= n
        return piece

    def feed(self, data: bytes) -> list[tuple[RequestStart | None, bytes]]:
        self._buf += data
        out: list[tuple[RequestStart | None, bytes]] = []
        while self._buf:
            if self._state == "head":
                if self._buf.startswith(b"\r\n"):  # empty lines between requests are allowed
                    del self._buf[:2]
                    out.append((None, b"\r\n"))
                    continue
                end = self._buf.find(b"\r\n\r\n")
                if end < 0 or end + 4 > MAX_HEAD:
                    if len(self._buf) > MAX_HEAD:
                        raise ProxyProtocolError(f"a request head over {MAX_HEAD} bytes")
                    break
                head = bytes(self._buf[: end + 4])
                del self._buf[: end + 4]
                start, length, chunked = _parse_head(head)
                out.append((start, head))
                if chunked:
                    self._state = "chunk-size"
                elif length:
                    self._state, self._left = "body", length
            elif self._state in ("body", "chunk-data"):
                out.append((None, self._take()))
                if self._left == 0:
                    self._state = "head" if self._state == "body" else "chunk-size"
            else:  # chunk-size or trailer: line by line
                line = self._line()
                if line is None:
                    break
                out.append((None, line))
                if self._state == "trailer":
                    if line == b"\r\n":
                        self._state = "head"
                    continue
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise ProxyProtocolError(f"bad chunk size line {line[:40]!r}") from None
                if size < 0:
                    raise ProxyProtocolError(f"bad chunk size line {line[:40]!r}")
                if size == 0:
                    self._state = "trailer"
                else:
                    self._state, self._left = "chunk-data", size + 2  # the data and its CRLF
        return out


@dataclass(slots=True)
class ProxyStats:
    connections: int = 0
    requests: Counter[str] = field(default_factory=Counter)  # by method
    delayed: int = 0
    refused: int = 0  # connections reset at accept
    cut: int = 0  # open connections cut by refuse()
    held: int = 0
    hold_expired: int = 0  # held requests forwarded because hold_limit passed
    protocol_errors: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Mode:
    kind: str = "pass"  # pass | refuse | delay | hold
    method: str = ""
    path: str = ""
    every: int = 1
    seconds: float = 0.0
    seen: int = 0  # matching requests seen in this mode (the proxy's loop only)
    release: asyncio.Event | None = None


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (linger 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.fileno() >= 0:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError as exc:  # the peer is already gone: a plain close is all there is
            log.debug("fault proxy: no linger on a closing socket: %r", exc)
    writer.transport.abort()


class FaultProxy:
    def __init__(
        self, target: tuple[str, int] | str, *, hold_limit: float = 30.0, connect_timeout: float = 5.0
    ) -> None:
        if isinstance(target, str):
            parts = urlsplit(target)
            target = (parts.hostname or "127.0.0.1", parts.port or 80)
        if target[0] not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the fault proxy forwards to loopback only, not {target[0]!r}")
        self.target = target
        self.hold_limit = hold_limit
        self.connect_timeout = connect_timeout
        self.port = 0
        self._mode = _Mode()
        self._stats = ProxyStats()
        self._lock = threading.Lock()
        self._held_now = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None

    # -- life cycle (test thread) ----------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._failure is not None:
            raise RuntimeError(f"the fault proxy did not start: {self._failure!r}")
        return self

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
            if self._thread.is_alive():
                raise RuntimeError("the fault proxy did not stop within 10 s")
        self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- modes (test thread) ---------------------------------------------------------
    def _set(self, mode: _Mode) -> None:
        old, self._mode = self._mode, mode
        self._held_now.clear()
        if old.release is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(old.release.set)  # what the old mode held goes on

    def pass_through(self) -> None:
        self._set(_Mode())

    def refuse(self) -> None:
        self._set(_Mode("refuse"))
        assert self._loop is not None, "start the proxy first"
        self._loop.call_soon_threadsafe(self._cut_all)

    def delay(self, method: str, every: int, seconds: float) -> None:
        if every < 1 or seconds < 0:
            raise ValueError("delay needs every >= 1 and seconds >= 0")
        self._set(_Mode("delay", method=method.upper(), every=every, seconds=seconds))

    def hold(self, method: str, path_contains: str = "") -> None:
        self._set(_Mode("hold", method=method.upper(), path=path_contains, release=asyncio.Event()))

    def release(self) -> None:
        """Forward what is held and go back to passing everything."""
        self.pass_through()

    def wait_held(self, timeout: float) -> bool:
        """Block until a request is being held (True) or ``timeout`` passed (False)."""
        return self._held_now.wait(timeout)

    async def held(self, timeout: float) -> bool:
        """``wait_held`` for async tests (does not block their loop)."""
        return await asyncio.to_thread(self._held_now.wait, timeout)

    def stats(self) -> ProxyStats:
        with self._lock:
            s = self._stats
            return ProxyStats(s.connections, Counter(s.requests), s.delayed, s.refused, s.cut, s.held,
                              s.hold_expired, list(s.protocol_errors))  # fmt: skip

    # -- the proxy's loop -------------------------------------------------------------
    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start()/the test, never swallowed
            self._failure = exc
            self._ready.set()
            raise

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            self._cut_all(count=False)
            for t in list(self._handlers):
                t.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await server.wait_closed()

    def _count(self, **incs: int) -> None:
        with self._lock:
            for name, n in incs.items():
                setattr(self._stats, name, getattr(self._stats, name) + n)

    def _cut_all(self, count: bool = True) -> None:
        for conn in list(self._conns):
            _reset(conn.client)
            _reset(conn.upstream)
            if count:
                self._count(cut=1)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._count(connections=1)
        try:
            if self._mode.kind == "refuse":
                self._count(refused=1)
                _reset(writer)
                return
            try:
                async with asyncio.timeout(self.connect_timeout):
                    up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError as exc:  # TimeoutError included: the target is down
                log.info("fault proxy: target %s unreachable (%r): connection reset", self.target, exc)
                _reset(writer)
                return
            conn = _Conn(writer, up_writer)
            self._conns.add(conn)
            pumps = [asyncio.create_task(self._client_to_server(reader, conn)),
                     asyncio.create_task(self._server_to_client(up_reader, conn))]  # fmt: skip
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                self._conns.discard(conn)
                _reset(writer)
                _reset(up_writer)
                for p in pumps:
                    p.cancel()
                for r in await asyncio.gather(*pumps, return_exceptions=True):
                    if isinstance(r, Exception):  # a connection reset or cut: the end of this one
                        log.debug("fault proxy: connection ended: %r", r)
        finally:
            self._handlers.discard(task)

    async def _client_to_server(self, reader: asyncio.StreamReader, conn: _Conn) -> None:
        splitter = RequestSplitter()
        while True:
            data = await reader.read(65536)
            if not data:
                break
            try:
                pieces = splitter.feed(data)
            except ProxyProtocolError as exc:
                with self._lock:
                    self._stats.protocol_errors.append(str(exc))
                log.warning("fault proxy: %s: connection cut", exc)
                _reset(conn.client)
                _reset(conn.upstream)
                return
            for start, piece in pieces:
                if start is not None:
                    await self._on_request(start)
                conn.upstream.write(piece)
            await conn.upstream.drain()
        if conn.upstream.can_write_eof():
            conn.upstream.write_eof()

    async def _server_to_client(self, reader: asyncio.StreamReader, conn: _Conn) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            conn.client.write(data)
            await conn.client.drain()
        conn.client.close()  # the server is done with this connection: so is the client
        with contextlib.suppress(ConnectionError):  # the client may already be gone
            await conn.client.wait_closed()

    async def _on_request(self, start: RequestStart) -> None:
        with self._lock:
            self._stats.requests[start.method] += 1
        mode = self._mode
        if mode.kind == "delay" and start.method == mode.method:
            mode.seen += 1
            if mode.seen % mode.every == 0:
                self._count(delayed=1)
                await asyncio.sleep(mode.seconds)
        elif mode.kind == "hold" and start.method == mode.method and mode.path in start.target:
            assert mode.release is not None
            self._count(held=1)
            self._held_now.set()
            try:
                async with asyncio.timeout(self.hold_limit):
                    await mode.release.wait()
            except TimeoutError:
                self._count(hold_expired=1)
                log.warning("fault proxy: %s %s held past %g s: forwarded", start.method, start.target,
                            self.hold_limit)  # fmt: skip
