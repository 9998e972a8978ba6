"""A tidecast node: every role in one process (``tidecast serve``).

Builds the components from one ``Settings`` and owns their lifecycle:
``start()`` brings them up in data-path order, ``aclose()`` stops them in
reverse — publishers are closed, their last segments finished and packaged,
playlists ended, and no ffmpeg or socket is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from tidecast.bus.memory import MemoryBus
from tidecast.bus.nats import NatsBus
from tidecast.chat.hub import ChatHub
from tidecast.chat.room import ChatLimits
from tidecast.config import Settings
from tidecast.db.chat import ChatLog
from tidecast.db.recordings import Recordings
from tidecast.db.repo import Database, NewStream
from tidecast.ingest.rtmp.server import RTMPServer
from tidecast.ingest.sessions import PublishGate
from tidecast.origin.app import AppContext, create_app
from tidecast.origin.cache import HotCache
from tidecast.origin.fastpath import fast_path_protocol
from tidecast.origin.metrics import MetricsListener
from tidecast.packager.service import Packager
from tidecast.recorder.service import Recorder
from tidecast.segmenter.service import SegmenterService
from tidecast.store.factory import open_store, store_url_of
from tidecast.store.local import LocalStore
from tidecast.transcode.coordinator import TranscodeCoordinator

log = logging.getLogger("tidecast.node")

ADMIN_TOKEN_FILE = "admin-token"
DEFAULT_STREAM = "main"


@dataclass(frozen=True, slots=True)
class FirstRun:
    admin_token: str | None  # set only when it was just generated
    default_stream: NewStream | None


def load_or_create_admin_token(data_dir: Path) -> tuple[str, bool]:
    path = data_dir / ADMIN_TOKEN_FILE
    if path.is_file():
        token = path.read_text().strip()
        if token:
            return token, False
    token = "adm_" + secrets.token_urlsafe(24)
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


def load_or_create_secret(data_dir: Path, name: str) -> bytes:
    """A random secret kept in the data dir (mode 0600), made on first use."""
    path = data_dir / name
    if path.is_file() and path.stat().st_size >= 32:
        return path.read_bytes()
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
    return secret


def admin_secrets(settings: Settings) -> tuple[str, bytes]:
    """(admin token, chat token secret): from the shared setting, or the data dir's."""
    if settings.admin_token:
        token = settings.admin_token
        return token, hmac.new(token.encode(), b"tidecast chat tokens", hashlib.sha256).digest()
    token, _ = load_or_create_admin_token(settings.data_dir)
    return token, load_or_create_secret(settings.data_dir, "chat-secret")


def open_database(settings: Settings) -> Database:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Database(settings.db_url)


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = open_database(settings)
        self.admin_token, new_token = load_or_create_admin_token(settings.data_dir)
        if settings.admin_token:  # shared by a deployment's nodes
            self.admin_token, new_token = settings.admin_token, False
        default = None
        if not self.db.list_streams():
            default = self.db.create_stream(DEFAULT_STREAM, "tidecast default stream")
        self.first_run = FirstRun(self.admin_token if new_token else None, default)
        self.store = open_store(settings.store_url, settings.media_dir)
        self.bus: MemoryBus | NatsBus = (
            NatsBus(settings.bus_url, prefix=settings.bus_prefix, ack_wait=settings.job_ack_wait)
            if settings.bus_url else MemoryBus()
        )  # fmt: skip
        rungs = settings.rungs()
        self.segmenter = SegmenterService(
            self.store, self.bus, settings.segment_target, rungs, settings.x264_preset,
            lag_threshold=settings.transcode_lag_threshold,
        )  # fmt: skip
        self.metrics = MetricsListener(self.bus)
        self.recordings = Recordings(self.db)
        self.recorder = Recorder(self.store, self.recordings)
        self.packager = Packager(
            self.store, self.bus, window=settings.playlist_window,
            target_duration=settings.segment_target,
            include_source=settings.source_rendition or not rungs, recorder=self.recorder,
        )  # fmt: skip
        self.transcoder = (
            TranscodeCoordinator(self.bus, store_url_of(self.store), workers=settings.workers,
                                 max_attempts=settings.transcode_attempts,
                                 progress_every=settings.job_ack_wait / 3)
            if rungs else None
        )  # fmt: skip
        self.gate = PublishGate(self.db, self.segmenter, self.bus, settings.reconnect_grace)
        blocked = tuple(w.strip() for w in settings.chat_blocked_words.split(",") if w.strip())
        self.chat = ChatHub(self.bus, ChatLog(self.db), self._live_broadcast,
                            limits=ChatLimits(blocked_words=blocked))  # fmt: skip
        self.rtmp = RTMPServer(
            self.gate, settings.host, settings.rtmp_port, settings.rtmp_app,
            handshake_timeout=settings.rtmp_handshake_timeout,
            idle_timeout=settings.rtmp_idle_timeout,
        )  # fmt: skip
        self.app = create_app(
            AppContext(
                settings,
                self.db,
                self.gate,
                self.admin_token,
                time.time(),
                self.transcoder,
                self.recorder,
                self.chat,
                admin_secrets(settings)[1],
                cache=None if isinstance(self.store, LocalStore)
                else HotCache(self.store, settings.origin_cache_mb << 20, settings.segment_target / 8),
                media_root=self.store.root if isinstance(self.store, LocalStore) else None,
            )  # fmt: skip
        )
        self._http: uvicorn.Server | None = None
        self._retention_task: asyncio.Task[None] | None = None
        self._http_task: asyncio.Task[None] | None = None
        self.http_port = settings.http_port

    async def start(self) -> None:
        ensure = getattr(self.store, "ensure_bucket", None)
        if ensure is not None:
            await ensure()
        if isinstance(self.bus, NatsBus):
            await self.bus.start()
        await self.recorder.recover()  # broadcasts a crash left open become VOD
        await self.packager.start()
        await self.chat.start()
        self.metrics.start()
        self._retention_task = asyncio.create_task(self._retention_loop(), name="retention")
        if self.transcoder is not None:
            await self.transcoder.start()
        await self.bus.ready()  # every consumer is listening before the first publisher
        self._http, self._http_task, self.http_port = await start_http(self.app, self.settings, self.store)
        await self.rtmp.start()
        log.info("HTTP origin listening on %s:%d", self.settings.host, self.http_port)

    def _live_broadcast(self, stream: str) -> tuple[str, float] | None:
        """The broadcast a chat message belongs to: live, or paused within the grace period."""
        s = self.gate.live.get(stream)
        if s is not None:
            return s.broadcast, s.started_at
        p = self.gate.paused.get(stream)
        return (p.broadcast, p.started_at) if p is not None else None

    async def _retention_loop(self, every: float = 600.0) -> None:
        while True:
            try:
                await self.recorder.apply_retention({s.broadcast for s in self.gate.live.values()})
            except Exception:
                log.exception("retention sweep failed; trying again later")
            await asyncio.sleep(every)

    async def aclose(self) -> None:
        log.info("shutting down")
        if self._retention_task is not None:
            self._retention_task.cancel()
        await self.chat.aclose()
        await self.rtmp.aclose()  # closes publishers: gate finishes their broadcasts
        await self.gate.aclose()
        await self.segmenter.aclose()
        if self.transcoder is not None:
            await self.transcoder.aclose()  # finishes queued jobs, stops the workers
        await self.packager.aclose()  # handles what is still queued, then stops
        await self.metrics.aclose()
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._http_task
        await self.bus.aclose()
        self.db.close()


class _EmbeddedHTTPServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the node owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def http_protocol(store: object) -> type[asyncio.Protocol] | str:
    """Stored HLS objects of a local store go out through the sendfile fast path;
    everything else (and a remote store's objects) through the app."""
    if isinstance(store, LocalStore):
        return fast_path_protocol(store.root)
    return "httptools"


async def start_http(
    app: object, settings: Settings, store: object
) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    """Serve ``app`` on the configured address (the fast path in front for a local
    store); returns once it accepts connections: (server, its task, bound port)."""
    sock = _bind(settings.host, settings.http_port)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", ws_max_size=16 * 1024,  # type: ignore[arg-type]
        timeout_graceful_shutdown=2, http=http_protocol(store),
    )  # fmt: skip
    server = _EmbeddedHTTPServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
    while not server.started:
        if task.done():
            await task
            raise RuntimeError("HTTP server stopped during start-up")
        await asyncio.sleep(0.01)
    return server, task, sock.getsockname()[1]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio turns Nagle off only on sockets that say so,
    # and small responses written in two parts must not wait for a delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock
