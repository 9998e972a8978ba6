"""The origin's fast path: GET/HEAD of stored HLS objects straight from the file
with ``sendfile(2)``, in front of the ASGI app on the same port.

Why: a live origin spends nearly all its time sending the same few segments to
many players. Through the ASGI stack each segment costs a response object, a
copy of its bytes into the transport's buffer and several trips through the
event loop; here it costs one parse of the request head, one ``open``/``fstat``
(the same path checks as ``files.serve``), and the kernel copying the file to
the socket. The responses are the ones ``files.respond`` builds — status,
Content-Type, ETag, Last-Modified, Cache-Control, Range/If-Range, 304/416 and
the CORS headers — so both paths answer alike (``tests/e2e/test_http.py`` runs
against this one).

Each connection starts here. The first request that is not a plain GET/HEAD
under ``/hls/`` (an API call, a page, a WebSocket upgrade, anything with a
body) hands the connection — with every byte read so far — to uvicorn's own
HTTP protocol, which serves it and the rest of the connection through the app.

Connection caps and the request-head deadline (``origin/guard.py``) come before
everything else: a connection over a cap is refused at accept, and a head that is
late never reaches a request's handling (the playback guard included).

Playback access (``origin/playback.py``): every request asks the guard first,
from its caches; one it cannot answer from them (a policy to read again, a
broadcast not seen yet) waits as a task, like an LL-HLS request. Objects that
are served differently (keys, encrypted segments, playlists that get EXT-X-KEY
tags) are built by the guard as the app builds them.

LL-HLS waits stay here too (``origin/reload.py``): a playlist request with
delivery directives, and a request for a part that is not stored yet, run as
a task on the connection (later requests on it queue behind, as pipelined
ones do); the answer then goes out like any other — a hinted part that came
by ``sendfile`` from its file. Only requests with ``_HLS_`` in their query, or
for a missing part, take that turn: everything else is untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from tidecast.access import tokens
from tidecast.origin import files
from tidecast.origin.blocking import PartRef, parse_part_key
from tidecast.origin.guard import (
    ConnectionTable,
    GuardedHttpTools,
    HeadClock,
    guarded_http,
    head_expired,
)
from tidecast.origin.playback import Decision, Need, PlaybackGuard, local_loader, serve_special
from tidecast.origin.reload import PartOutcome, ReloadService, served_reply
from tidecast.store.base import ObjectNotFound

log = logging.getLogger("tidecast.origin.fastpath")

MAX_HEAD = 16 * 1024  # a request head larger than this goes to uvicorn (which refuses it)
KEEP_ALIVE = 5.0  # seconds an idle connection stays open (uvicorn's default too)
CORS = (
    b"access-control-allow-origin: *\r\n"
    b"access-control-expose-headers: Content-Length, Content-Range, ETag, Age\r\n"
)
REASONS = {200: b"OK", 206: b"Partial Content", 304: b"Not Modified", 400: b"Bad Request",
           403: b"Forbidden", 404: b"Not Found", 416: b"Range Not Satisfiable", 503: b"Service Unavailable"}  # fmt: skip

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_CORK = getattr(socket, "TCP_CORK", 0)  # Linux
_CONDITIONAL = {"range", "if-none-match", "if-modified-since", "if-range"}
_date_cache: tuple[int, bytes] = (0, b"")


def _date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]


def fast_path_protocol(
    media_root: Path, reload: ReloadService | None = None, guard: PlaybackGuard | None = None,
    table: ConnectionTable | None = None, head_timeout: float = 10.0,
) -> type[asyncio.Protocol]:  # fmt: skip
    """The protocol class to give uvicorn (``Config(http=...)``) for one media root;
    ``reload`` answers LL-HLS requests that wait (none: they are served as files);
    ``guard`` decides who may have what (none: everything is public); ``table``
    admits connections (caps), ``head_timeout`` bounds each request head."""
    root = media_root.resolve()

    class Protocol(HLSFastPath):
        media_root = root
        ll = reload
        playback = guard
        load = staticmethod(local_loader(root))
        connections = table
        head_deadline = head_timeout
        app_protocol = guarded_http(table, head_timeout)
        root_prefix = str(root) + os.sep
        hls_prefix = str(root / "hls") + os.sep
        heads: dict[str, tuple[tuple[int, int, int, int], bytes]] = {}  # noqa: RUF012 - one per root

    return Protocol


class HLSFastPath(asyncio.Protocol):
    media_root: Path
    root_prefix: str
    hls_prefix: str
    # the header block of a plain 200 GET per file (as long as the file is unchanged)
    heads: dict[str, tuple[tuple[int, int, int, int], bytes]]
    ll: ReloadService | None = None
    playback: PlaybackGuard | None = None
    load: Any = None
    connections: ConnectionTable | None = None  # the listener's caps
    head_deadline: float = 10.0  # s a whole request head may take (not per byte)
    app_protocol: type[GuardedHttpTools] = GuardedHttpTools

    def __init__(
        self, config: Any, server_state: Any, app_state: Any = None, _loop: Any = None
    ) -> None:
        self.config, self.server_state, self.app_state = config, server_state, app_state
        self.loop = _loop or asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        self.fd = -1  # the socket
        self.buf = bytearray()
        self.busy = False  # a response is being sent
        self.close_after = False
        self.closed = False
        self.handed_over = False
        self.paused = False
        self.idle: asyncio.TimerHandle | None = None
        # the response being sent: header bytes, then a file range
        self.out = b""
        self.file_fd = -1
        self.file_offset = 0
        self.file_left = 0
        self.writing = False
        self.sock: Any = None
        self.corked = False
        self.waiting: asyncio.Task[Any] | None = None  # an LL-HLS request being held
        self.head = HeadClock(self.loop, self.head_deadline, self._head_expired)

    # -- connection ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.connections is not None and not self.connections.admit(transport):
            self.closed = True
            return
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1
        self.sock = sock if sock is not None and _CORK else None
        self.server_state.connections.add(self)
        if self.fd < 0 or not hasattr(self.loop, "_add_writer"):  # not asyncio's selector loop
            self._hand_over()
            return
        self._arm_idle()
        self.head.start()  # the first request's head counts from the accept

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiting is not None:
            self.waiting.cancel()
        self._release_file()
        self._stop_writer()
        self.server_state.connections.discard(self)
        if self.idle is not None:
            self.idle.cancel()
        self.head.stop()
        if self.connections is not None and self.transport is not None and not self.handed_over:
            self.connections.release(self.transport)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close now if idle, else after this response
        (a held request is let go at once: its client asks again elsewhere)."""
        if self.waiting is not None and self.transport is not None:
            self.waiting.cancel()
            self.transport.close()
        elif self.busy:
            self.close_after = True
        elif self.transport is not None:
            self.transport.close()

    def _arm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = self.loop.call_later(KEEP_ALIVE, self._idle_timeout)

    def _idle_timeout(self) -> None:
        if not self.busy and not self.handed_over and self.transport is not None:
            self.transport.close()

    def _head_expired(self) -> None:
        if not self.busy and not self.handed_over and not self.closed:
            head_expired(self.connections, self.transport)

    # -- requests -----------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.buf += data
        if (
            len(self.buf) > 4 * MAX_HEAD
            and self.busy
            and not self.paused
            and self.transport is not None
        ):
            self.transport.pause_reading()  # a client pipelining far ahead waits
            self.paused = True
        if not self.busy:
            self._next()

    def _next(self) -> None:
        while not self.busy and not self.closed and not self.handed_over:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._hand_over()
                elif self.buf:  # a head on its way: one deadline for all of it, not per byte
                    if self.idle is not None:
                        self.idle.cancel()
                    self.head.start()
                return
            head = bytes(self.buf[:end])
            request = _parse_head(head)
            if request is None:
                self._hand_over()
                return
            del self.buf[: end + 4]
            if self.idle is not None:
                self.idle.cancel()
            self.head.stop()
            self._serve(*request)
        if not self.busy and self.paused and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False

    def _hand_over(self) -> None:
        """Everything else is the app's: uvicorn takes this connection from here."""
        assert self.transport is not None
        self.handed_over = True
        if self.idle is not None:
            self.idle.cancel()
        self.head.start()  # unless it runs already: a head is on its way, or comes next
        if self.paused:
            self.transport.resume_reading()
            self.paused = False
        self.server_state.connections.discard(self)
        proto = self.app_protocol(config=self.config, server_state=self.server_state,
                                  app_state=self.app_state)  # fmt: skip
        proto.adopt(self.head)  # admitted already; a head on its way keeps its deadline
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        if self.buf:
            proto.data_received(bytes(self.buf))
        self.buf.clear()

    def _serve(
        self, method: bytes, raw_path: str, version: bytes, headers: dict[str, str], query: str = "",
        waited: bool = False,
    ) -> None:  # fmt: skip
        if not waited:
            self.server_state.total_requests += 1
        conn = headers.get("connection", "").lower()
        self.close_after = self.close_after or (
            conn == "close" if version == b"HTTP/1.1" else conn != "keep-alive"
        )
        head = method == b"HEAD"
        private = False
        if self.playback is not None:
            d = self.playback.check(unquote(raw_path)[len("/hls/") :], headers.get("cookie", ""))
            if isinstance(d, Need) or (isinstance(d, Decision) and d.special):
                self._hold(self._guarded(method, raw_path, version, headers, query))
                return
            if d.status:
                self._start(self._json(d.status, d.detail, head, b"cache-control: no-store\r\n"), -1, 0, 0)
                return
            raw_path = "/hls/" + tokens.split_path(raw_path[len("/hls/") :])[1]
            private = d.private
        if "_HLS_" in query and self.ll is not None and raw_path.endswith(".m3u8") and not waited:
            self._hold(self._blocking(method, raw_path, version, headers, query))
            return
        file_fd = -1
        full = ""
        try:
            full, suffix = self._resolve(raw_path)
            file_fd = os.open(full, _OPEN_FLAGS)
            st = os.fstat(file_fd)
            if not stat.S_ISREG(st.st_mode):
                raise FileNotFoundError(full)
            if not files._real_path(file_fd, Path(full)).startswith(self.root_prefix):
                raise files.BadPath("outside the media root")  # a symlinked directory on the way
            plain = (
                not head
                and not private
                and suffix not in files.PLAYLIST_TYPES
                and not (headers.keys() & _CONDITIONAL)
            )
            ident = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            cached = self.heads.get(full) if plain else None
            if cached is not None and cached[0] == ident:  # the usual case: a whole segment
                self._start(b"HTTP/1.1 200 OK\r\ndate: " + _date() + cached[1] + self._conn_header(), file_fd,
                            0, st.st_size)  # fmt: skip
                return
            wanted: list[tuple[int, int]] = []

            def read(start: int, length: int) -> bytes:
                if suffix in files.PLAYLIST_TYPES:  # small, and checked for ENDLIST
                    return os.pread(file_fd, length, start)
                wanted.append((start, length))
                return b""

            served = files.respond(
                suffix, files.etag_for(st), st.st_mtime, st.st_size, read, headers, head
            )
            if private and self.playback is not None:
                served = self.playback.finish(Decision(0, private=True), served)
        except files.BadPath as exc:
            self._finish_fd(file_fd)
            self._send_json(400, str(exc), head)
            return
        except (OSError, ValueError) as exc:  # missing, a symlink (ELOOP), a directory, ...
            self._finish_fd(file_fd)
            if isinstance(exc, FileNotFoundError) and self.ll is not None and not waited and full:
                ref = parse_part_key(full[len(self.root_prefix) :])
                if ref is not None:  # perhaps the hinted part, not stored yet
                    self._hold(self._part(method, raw_path, version, headers, full, ref))
                    return
            if not isinstance(exc, FileNotFoundError | NotADirectoryError | IsADirectoryError):
                log.warning("refused %s: %s", raw_path, exc)
            self._send_json(404, "not found", head)
            return
        fields = b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in served.headers.items())
        fields = (
            b"\r\nserver: tidecast\r\n"
            + fields
            + (b"content-length: 0\r\n" if served.status == 416 else b"")
            + CORS
        )
        if plain and served.status == 200:
            if len(self.heads) > 4096:
                self.heads.clear()
            self.heads[full] = (ident, fields)
        out = (
            b"HTTP/1.1 %d %s\r\ndate: " % (served.status, REASONS.get(served.status, b"")) + _date()
        )
        out += fields + self._conn_header()
        if served.body and not head and served.status in (200, 206):
            out += served.body
        if wanted and not head and served.status in (200, 206):
            self._start(out, file_fd, *wanted[0])
        else:
            self._finish_fd(file_fd)
            self._start(out, -1, 0, 0)

    def _conn_header(self) -> bytes:
        return b"connection: close\r\n\r\n" if self.close_after else b"\r\n"

    def _resolve(self, raw_path: str) -> tuple[str, str]:
        """The same rules as ``files.resolve``, on strings (this runs per request)."""
        lowered = raw_path.lower()
        decoded = unquote(raw_path)[len("/hls/") :]
        if "%2f" in lowered or "%5c" in lowered or "%00" in lowered or "\\" in decoded:
            raise files.BadPath("encoded separators are not allowed")
        parts = decoded.split("/")
        if not decoded or any(not files._PART.match(p) for p in parts):
            raise files.BadPath(f"bad path {decoded!r}")
        dot = parts[-1].rfind(".")
        suffix = parts[-1][dot:] if dot > 0 else ""
        if suffix not in files.MEDIA_TYPES:
            raise FileNotFoundError(decoded)
        return self.hls_prefix + decoded, suffix

    def _send_json(self, status: int, detail: str, head: bool) -> None:
        self._start(self._json(status, detail, head), -1, 0, 0)

    def _json(self, status: int, detail: str, head: bool, extra: bytes = b"") -> bytes:
        body = json.dumps({"detail": detail}).encode()
        out = (b"HTTP/1.1 %d %s\r\ndate: %s\r\nserver: tidecast\r\ncontent-type: application/json\r\n"
               b"content-length: %d\r\n" % (status, REASONS[status], _date(), len(body)))  # fmt: skip
        out += extra + CORS + (b"connection: close\r\n" if self.close_after else b"") + b"\r\n"
        return out + (b"" if head else body)

    # -- LL-HLS waits -------------------------------------------------------------
    def _hold(self, coro: Any) -> None:
        """Answer this request when ``coro`` says how: the response's bytes, or the
        request again, to serve from its file as usual (it is stored now, or had no
        delivery directives after all). Later requests on the connection wait their turn."""
        self.busy = True
        task = self.loop.create_task(coro)
        self.waiting = task
        task.add_done_callback(self._held)

    def _held(self, task: asyncio.Task[Any]) -> None:
        self.waiting = None
        if task.cancelled() or self.closed:
            return
        exc = task.exception()
        if exc is not None:  # a bug: answer, and keep the connection usable
            log.error("LL-HLS request failed", exc_info=exc)
            self.close_after = True
            self._start(self._json(503, "internal error; try again", False, b"retry-after: 1\r\n"), -1, 0, 0)
            return
        action = task.result()
        self.busy = False
        if isinstance(action, bytes):
            self._start(action, -1, 0, 0)
        elif len(action) == 5:  # decided by the playback guard: served from the start
            self._serve(*action)
        else:
            method, raw_path, version, headers = action
            self._serve(method, raw_path, version, headers, "", waited=True)

    async def _blocking(self, method: bytes, raw_path: str, version: bytes, headers: dict[str, str],
                        query: str) -> bytes | tuple[bytes, str, bytes, dict[str, str]]:  # fmt: skip
        head = method == b"HEAD"
        assert self.ll is not None
        try:
            full, _ = self._resolve(raw_path)
            reply = await self.ll.playlist(full[len(self.root_prefix) :], query)
        except files.BadPath as exc:
            return self._json(400, str(exc), head)
        except (FileNotFoundError, ObjectNotFound):
            return self._json(404, "not found", head)
        except Exception as exc:  # noqa: BLE001 - the store is away, not the playlist
            log.warning("store unavailable for %s: %r", raw_path, exc)
            return self._json(503, "the media store is unavailable; try again", head,
                              b"retry-after: 1\r\ncache-control: no-store\r\n")  # fmt: skip
        if reply is None:  # no delivery directives after all: the file as it is
            return (method, raw_path, version, headers)
        served = served_reply(reply, headers, head)
        return self._head_of(served) + (b"" if head else served.body)

    async def _part(self, method: bytes, raw_path: str, version: bytes, headers: dict[str, str], full: str,
                    ref: PartRef) -> bytes | tuple[bytes, str, bytes, dict[str, str]]:  # fmt: skip
        head = method == b"HEAD"
        assert self.ll is not None
        try:
            outcome = await self.ll.part(full[len(self.root_prefix) :], ref)
        except Exception as exc:  # noqa: BLE001 - the store is away, not the part
            log.warning("store unavailable for %s: %r", raw_path, exc)
            outcome = PartOutcome.TIMEOUT
        if outcome is PartOutcome.READY:
            return (method, raw_path, version, headers)
        if outcome is PartOutcome.GONE:
            return self._json(404, "not found", head)
        return self._json(503, "the part is not stored yet; try again", head,
                          b"retry-after: 1\r\ncache-control: no-store\r\n")  # fmt: skip

    async def _guarded(self, method: bytes, raw_path: str, version: bytes, headers: dict[str, str],
                       query: str) -> bytes | tuple[bytes, str, bytes, dict[str, str], str]:  # fmt: skip
        """A request the guard could not decide from its caches, or one it serves itself."""
        head = method == b"HEAD"
        assert self.playback is not None
        try:
            d = await self.playback.decide(unquote(raw_path)[len("/hls/") :], headers.get("cookie", ""))
            if d.status:
                return self._json(d.status, d.detail, head, b"cache-control: no-store\r\n")
            clean = "/hls/" + tokens.split_path(raw_path[len("/hls/") :])[1]
            if not d.special:  # served as usual, now that the guard knows (LL-HLS waits too)
                return (method, raw_path, version, headers, query)
            if d.special != "key":  # (a key is no stored file)
                self._resolve(clean)  # the same path rules
            served = await serve_special(self.playback, d, self.load, headers, head, query, self.ll)
        except files.BadPath as exc:
            return self._json(400, str(exc), head)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, ObjectNotFound):
            return self._json(404, "not found", head)
        except Exception as exc:  # noqa: BLE001 - the database or the store is away, not the object
            log.warning("cannot decide or serve %s: %r", raw_path, exc)
            return self._json(503, "try again", head, b"retry-after: 1\r\ncache-control: no-store\r\n")
        return self._head_of(served) + (b"" if head else served.body)

    def _head_of(self, served: files.ServedObject) -> bytes:
        fields = b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in served.headers.items())
        return (b"HTTP/1.1 %d %s\r\ndate: " % (served.status, REASONS.get(served.status, b"")) + _date()
                + b"\r\nserver: tidecast\r\n" + fields + CORS + self._conn_header())  # fmt: skip

    @staticmethod
    def _finish_fd(fd: int) -> None:
        if fd >= 0:
            os.close(fd)

    # -- sending ------------------------------------------------------------------
    def _start(self, out: bytes, file_fd: int, offset: int, length: int) -> None:
        self.busy = True
        self.out, self.file_fd, self.file_offset, self.file_left = out, file_fd, offset, length
        if length and self.sock is not None:  # header and body in full packets (nginx's tcp_nopush)
            self._cork(1)
        self._pump()

    def _cork(self, on: int) -> None:
        assert self.sock is not None
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, _CORK, on)
            self.corked = bool(on)
        except OSError as exc:
            log.debug("TCP_CORK: %r", exc)

    def _pump(self) -> None:
        """Write what is left of the response without blocking; the socket's
        writability brings us back here."""
        try:
            while self.out:
                n = os.write(self.fd, self.out)
                self.out = self.out[n:]
            while self.file_left > 0:
                n = os.sendfile(self.fd, self.file_fd, self.file_offset, self.file_left)
                if n == 0:  # the file shrank under us: the response cannot be completed
                    raise ConnectionAbortedError("file truncated while sending")
                self.file_offset += n
                self.file_left -= n
        except BlockingIOError:
            if not self.writing:
                # the loop's own (transport-level) registration: the public add_writer
                # refuses an fd a transport owns, and this transport's buffer stays empty
                self.loop._add_writer(self.fd, self._pump)  # type: ignore[union-attr]
                self.writing = True
            return
        except OSError as exc:  # the client went away (or the file shrank)
            log.debug("fast path send failed: %r", exc)
            self._release_file()
            self._stop_writer()
            self.busy = False
            if self.transport is not None:
                self.transport.abort()
            return
        self._stop_writer()
        self._release_file()
        if self.corked:
            self._cork(0)  # push out the last partial packet now
        self.busy = False
        if self.close_after:
            if self.transport is not None:
                self.transport.close()
            return
        self._arm_idle()
        self._next()

    def _stop_writer(self) -> None:
        if self.writing:
            self.loop._remove_writer(self.fd)  # type: ignore[union-attr]
            self.writing = False

    def _release_file(self) -> None:
        if self.file_fd >= 0:
            os.close(self.file_fd)
            self.file_fd = -1


def _parse_head(head: bytes) -> tuple[bytes, str, bytes, dict[str, str], str] | None:
    """(method, raw path, version, headers, raw query) of a request the fast path
    serves, or None for anything else (the app's)."""
    line, _, rest = head.partition(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3:
        return None
    method, target, version = parts
    if method not in (b"GET", b"HEAD") or not target.startswith(b"/hls/") or version not in (
        b"HTTP/1.1", b"HTTP/1.0"):  # fmt: skip
        return None
    headers: dict[str, str] = {}
    for raw in rest.split(b"\r\n") if rest else ():
        name, sep, value = raw.partition(b":")
        if not sep or not name or name != name.strip() or b" " in name:
            return None  # malformed: let the full parser refuse it
        headers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
    if (
        "transfer-encoding" in headers
        or headers.get("content-length", "0") != "0"
        or "upgrade" in headers
    ):
        return None
    path_b, _, query = target.partition(b"?")
    try:
        path = path_b.decode("ascii")
    except UnicodeDecodeError:
        return None
    return method, path, version, headers, query.decode("latin-1")
