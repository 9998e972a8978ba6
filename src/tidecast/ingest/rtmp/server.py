"""Asyncio adapter for the sans-I/O RTMP core: sockets in, events to the publish gate.

One task per connection owns its ``ServerConnection``. The same connections
come in over plain TCP (RTMP) and, with an ``ssl`` context, over TLS on a port
of their own (RTMPS): asyncio's TLS transport, so the code below is the same.

Every client has one deadline from its TCP connect to an accepted publish
(``handshake_timeout``): trickling the handshake a byte at a time does not
extend it. A publisher then may stay silent at most ``idle_timeout`` per
read. Connections are capped in all and per address (over the cap: closed at
accept, logged). At ``connect`` a banned address or one outside the global
CIDR lists is refused with ``NetConnection.Connect.Rejected``; at
``publish`` the gate's policy decides (``ingest/auth.py``) and a refusal
goes out as an onStatus error (``NetStream.Publish.BadName``) with its
description. Any protocol error closes that one connection with a log line —
never the server.

After handling each read, a connection waits while a publisher's segmenter
queue is full (``sink.room()``): it reads nothing from that socket meanwhile,
so TCP holds the encoder back; only that publisher waits. A publisher that
breaks a segment limit, or stays held past the backpressure deadline, gets an
onStatus ``NetStream.Publish.Rejected`` saying why and is disconnected; its
broadcast ends as if it had unpublished.

Shutdown (``aclose``) stops accepting, asks every connection to stop (it stops
reading and ends its sessions as "server shutdown") and waits for them, at
most ``shutdown_timeout``; only a connection still running then is
cancelled. The connection tasks are asyncio's (``start_server``): they are
tracked here and never end with an exception, so nothing is logged as an
unhandled error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass

from tidecast.ingest.access import parse_address
from tidecast.ingest.rtmp import protocol as rtmp
from tidecast.ingest.sessions import LiveSession, PublishGate, PublishRefused
from tidecast.media import aac, h264
from tidecast.media.errors import MediaError
from tidecast.media.frames import MediaFrame, TrackKind
from tidecast.segmenter.core import SegmentLimitError

log = logging.getLogger("tidecast.ingest.rtmp")

READ_SIZE = 64 * 1024


class CloseConnection(Exception):
    """We refused something (app, key, codec): the reply is sent, now hang up."""


@dataclass(slots=True)
class RTMPStats:
    connections: int = 0
    active: int = 0
    protocol_errors: int = 0
    timeouts: int = 0
    refused: int = 0
    over_capacity: int = 0  # connections closed at accept: the global or a per-address cap


class RTMPServer:
    def __init__(
        self, gate: PublishGate, host: str, port: int, app: str = "live",
        handshake_timeout: float = 10.0, idle_timeout: float = 30.0, max_connections: int = 512,
        shutdown_timeout: float = 10.0, max_per_ip: int = 16,
        tls: ssl.SSLContext | None = None, tls_port: int = 1936,
    ) -> None:  # fmt: skip
        self.gate = gate
        self.host = host
        self.port = port
        self.app = app
        self.handshake_timeout = handshake_timeout  # TCP connect -> publish accepted
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.shutdown_timeout = shutdown_timeout
        self.tls = tls
        self.tls_port = tls_port if tls is not None else None
        self.stats = RTMPStats()
        self._server: asyncio.Server | None = None
        self._tls_server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[None], Connection] = {}
        self._per_ip: dict[str, int] = {}
        self._closing = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept_plain, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        log.info("RTMP ingest listening on %s:%d", self.host, self.port)
        if self.tls is not None:
            # the TLS handshake is part of the connect-to-publish deadline
            self._tls_server = await asyncio.start_server(
                self._accept_tls, self.host, self.tls_port, ssl=self.tls,
                ssl_handshake_timeout=self.handshake_timeout,
            )  # fmt: skip
            self.tls_port = self._tls_server.sockets[0].getsockname()[1]
            log.info("RTMPS ingest listening on %s:%d", self.host, self.tls_port)

    async def aclose(self) -> None:
        self._closing = True
        for server in (self._server, self._tls_server):
            if server is not None:
                server.close()
        for conn in list(self._conns.values()):
            conn.stop()
        tasks = set(self._conns)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.shutdown_timeout)
            for task in pending:
                log.warning("%s: still busy %.0f s after shutdown began; cancelling it",
                            self._conns[task].remote, self.shutdown_timeout)  # fmt: skip
                task.cancel()
            if pending:
                _, stuck = await asyncio.wait(pending, timeout=self.shutdown_timeout)
                if stuck:
                    log.error("%d RTMP connection(s) did not stop", len(stuck))
        for server in (self._server, self._tls_server):
            if server is not None:
                await server.wait_closed()

    async def _accept_plain(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._accept(reader, writer, "rtmp")

    async def _accept_tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._accept(reader, writer, "rtmps")

    def connections_from(self, ip: str) -> int:
        return self._per_ip.get(ip, 0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      protocol: str) -> None:  # fmt: skip
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        addr = parse_address(str(peer[0])) if peer else None
        ip = str(addr) if addr is not None else (str(peer[0]) if peer else "?")
        remote = f"{peer[0]}:{peer[1]}" if peer else "?"
        if len(self._conns) >= self.max_connections or self._per_ip.get(ip, 0) >= self.max_per_ip:
            self.stats.over_capacity += 1
            if len(self._conns) >= self.max_connections:
                log.warning("refusing %s: %d connections already", remote, len(self._conns))
            else:
                log.warning("refusing %s: %d connections from %s already", remote, self.max_per_ip, ip)
            writer.close()
            return
        conn = self._conns[task] = Connection(self, reader, writer, remote, ip, protocol)
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        self.stats.connections += 1
        self.stats.active += 1
        if self._closing:
            conn.stop()  # accepted just as the server began to close
        try:
            await conn.run()
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # cancelled by aclose past its deadline: asyncio's own callback would log
            # this task's cancellation as an error; the shutdown was logged already
        except Exception:
            log.exception("%s: connection failed", remote)  # a bug: this connection only
        finally:
            self.stats.active -= 1
            del self._conns[task]
            left = self._per_ip.pop(ip, 1) - 1
            if left > 0:
                self._per_ip[ip] = left


class Connection:
    def __init__(
        self, server: RTMPServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        remote: str, ip: str = "", protocol: str = "rtmp",
    ) -> None:  # fmt: skip
        self.server = server
        self.reader = reader
        self.writer = writer
        self.remote = remote
        self.ip = ip or remote.rpartition(":")[0]
        self.protocol = protocol
        self.app = ""
        self.conn = rtmp.ServerConnection()
        self.sessions: dict[int, LiveSession] = {}
        self.log = logging.LoggerAdapter(log, {})
        self.started = time.monotonic()
        self.deadline = self.started + server.handshake_timeout  # until a publish is accepted
        self.connected = False
        self.published = False
        self.stopping = False
        self._stopped = asyncio.Event()

    def stop(self) -> None:
        """Server shutdown: stop reading; ``run`` ends its sessions and returns."""
        self.stopping = True
        self._stopped.set()  # ends a backpressure wait
        transport = self.writer.transport
        if isinstance(transport, asyncio.ReadTransport) and not transport.is_closing():
            transport.pause_reading()  # nothing more is fed to the reader after its EOF
        self.reader.feed_eof()  # wakes a pending read

    async def run(self) -> None:
        reason = "publisher disconnected"
        try:
            while not self.conn.closed:
                if self.published:
                    timeout = self.server.idle_timeout
                else:  # one deadline from connect to publish, however the bytes trickle in
                    timeout = self.deadline - time.monotonic()
                try:
                    if timeout <= 0:
                        raise TimeoutError
                    data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
                except TimeoutError:
                    self.server.stats.timeouts += 1
                    if self.published:
                        log.warning("%s: no data for %.0f s, closing", self.remote, timeout)
                    else:
                        log.warning("%s: no publish within %.0f s of connecting, closing",
                                    self.remote, self.server.handshake_timeout)  # fmt: skip
                    reason = "timeout"
                    break
                if self.stopping:
                    reason = "server shutdown"
                    break
                self.conn.receive_data(data)
                await self._handle_events()
                await self._flush()
                if not data:
                    break
                await self._wait_for_room()
        except CloseConnection as exc:
            log.info("%s: closing: %s", self.remote, exc)
            reason = str(exc)
        except rtmp.ProtocolError as exc:
            self.server.stats.protocol_errors += 1
            log.warning("%s: protocol error, closing: %s", self.remote, exc)
            reason = "protocol error"
            with contextlib.suppress(ConnectionError, OSError):
                await self._flush()
        except (ConnectionError, OSError) as exc:
            log.info("%s: connection lost: %s", self.remote, exc)
        except asyncio.CancelledError:
            reason = "server shutdown"
            raise
        finally:
            for session in list(self.sessions.values()):
                await self.server.gate.close(session, reason)
            self.sessions.clear()
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
                await self.writer.wait_closed()

    async def _wait_for_room(self) -> None:
        """Hold this publisher while its segments wait to be stored (backpressure)."""
        for stream_id, s in list(self.sessions.items()):
            if not s.sink.full() or self.stopping:
                continue
            room = asyncio.ensure_future(s.sink.room())
            stop = asyncio.ensure_future(self._stopped.wait())
            try:
                await asyncio.wait({room, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (room, stop):
                    t.cancel()
                await asyncio.gather(room, stop, return_exceptions=True)
            exc = None if room.cancelled() else room.exception()
            if isinstance(exc, SegmentLimitError):
                await self._refuse_media(stream_id, exc)
            elif exc is not None:
                raise exc

    async def _refuse_media(self, stream_id: int, exc: SegmentLimitError) -> None:
        """The publisher broke a limit: tell it why, then hang up."""
        self.server.stats.refused += 1
        self.conn.reject_publish(stream_id, "NetStream.Publish.Rejected", exc.description)
        await self._flush()
        raise CloseConnection(f"publish rejected: {exc.description}")

    async def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.writer.write(out)
            await self.writer.drain()

    async def _handle_events(self) -> None:
        # deciding on a connect/publish may release held events: drain until empty
        while events := self.conn.events():
            for ev in events:
                await self._handle(ev)

    async def _handle(self, ev: rtmp.Event) -> None:
        if isinstance(ev, rtmp.VideoFrame):
            s = self.sessions.get(ev.stream_id)
            if s:
                try:
                    s.sink.frame(MediaFrame(TrackKind.VIDEO, ev.dts, ev.pts, ev.data, ev.keyframe,
                                            time.time()))  # fmt: skip
                except SegmentLimitError as exc:
                    await self._refuse_media(ev.stream_id, exc)
        elif isinstance(ev, rtmp.AudioFrame):
            s = self.sessions.get(ev.stream_id)
            if s:
                try:
                    s.sink.frame(MediaFrame(TrackKind.AUDIO, ev.timestamp, ev.timestamp, ev.data,
                                            True, time.time()))  # fmt: skip
                except SegmentLimitError as exc:
                    await self._refuse_media(ev.stream_id, exc)
        elif isinstance(ev, rtmp.ConnectRequest):
            await self._on_connect(ev)
        elif isinstance(ev, rtmp.PublishRequest):
            await self._on_publish(ev)
        elif isinstance(ev, rtmp.VideoSequenceHeader):
            await self._on_config(ev.stream_id, TrackKind.VIDEO, ev.avcc)
        elif isinstance(ev, rtmp.AudioSequenceHeader):
            await self._on_config(ev.stream_id, TrackKind.AUDIO, ev.asc)
        elif isinstance(ev, rtmp.MetaData):
            s = self.sessions.get(ev.stream_id)
            if s:
                s.metadata = dict(ev.data)
                s.sink.metadata(s.metadata)
        elif isinstance(ev, rtmp.UnpublishRequest):
            s = self.sessions.pop(ev.stream_id, None)
            if s:
                await self.server.gate.close(s, "unpublished")
        elif isinstance(ev, rtmp.MediaRejected):
            log.warning("%s: %s", self.remote, ev.description)
            await self._flush()
            raise CloseConnection(ev.description)

    async def _on_connect(self, ev: rtmp.ConnectRequest) -> None:
        app = ev.app.strip("/")
        if app != self.server.app:
            log.warning("%s: refused connect to app %r (expected %r)", self.remote, app, self.server.app)
            self.conn.reject_connect(f"unknown application {app!r}; publish to /{self.server.app}")
            await self._flush()
            raise CloseConnection(f"connect to unknown app {app!r}")
        refusal = self.server.gate.auth.address_refusal(self.ip)
        if refusal is not None:
            self.server.stats.refused += 1
            log.warning("%s: refused connect: %s", self.remote, refusal)
            self.conn.reject_connect(refusal)
            await self._flush()
            raise CloseConnection(f"connect refused: {refusal}")
        self.connected = True
        self.app = app
        self.conn.accept_connect()

    async def _on_publish(self, ev: rtmp.PublishRequest) -> None:
        if ev.stream_id in self.sessions:
            self.conn.reject_publish(ev.stream_id, "NetStream.Publish.BadName", "already publishing")
            return
        try:
            # the name as sent: a key ("sk_..?x" drops the query), a JWT, or "<stream>?token=JWT"
            session = await self.server.gate.open(ev.name, self.remote, self.protocol, ip=self.ip,
                                                  app=self.app)  # fmt: skip
        except PublishRefused as exc:
            self.server.stats.refused += 1
            self.conn.reject_publish(ev.stream_id, exc.code, exc.description)
            await self._flush()
            raise CloseConnection(f"publish refused: {exc.description}") from None
        self.sessions[ev.stream_id] = session
        self.published = True
        self.conn.accept_publish(ev.stream_id)

    async def _on_config(self, stream_id: int, kind: TrackKind, raw: bytes) -> None:
        s = self.sessions.get(stream_id)
        if s is None:
            return
        try:
            if kind is TrackKind.VIDEO:
                v = h264.parse_avcc(raw)
                s.video = f"{v.codec} {v.width}x{v.height}"
                s.sink.video_config(v)
            else:
                a = aac.parse_asc(raw)
                s.audio = f"{a.codec} {a.sample_rate} Hz {a.channels} ch"
                s.sink.audio_config(a)
        except MediaError as exc:
            self.conn.reject_publish(stream_id, "NetStream.Publish.Rejected",
                                     f"bad {kind.value} configuration: {exc}")  # fmt: skip
            await self._flush()
            raise CloseConnection(f"bad {kind.value} sequence header: {exc}") from None
