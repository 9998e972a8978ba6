"""The scale-out roles: each stage of the pipeline as its own process.

``tidecast serve`` runs everything in one process on embedded defaults. A
deployment instead runs any number of each role, on any hosts, sharing one
configuration (``--config tidecast.toml`` or ``TIDECAST_*`` variables):

- ``tidecast ingest``   RTMP ingest + segmenter: source segments to the store,
                        jobs and segment events to the bus.
- ``tidecast worker``   transcode workers: take jobs from the shared work queue.
- ``tidecast packager`` playlists and recordings; one packager leads each stream
                        (a lease in the database), the others stand by.
- ``tidecast origin``   HTTP: HLS objects (through the hot-object cache), pages,
                        the JSON API and chat (fanned out over the bus).

They meet only in the bus (NATS JetStream), the database (PostgreSQL) and the
object store (S3 or a shared directory), so any process can die and be
restarted without losing what was accepted before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

import uvicorn

from tidecast.bus.nats import NatsBus
from tidecast.chat.hub import ChatHub
from tidecast.chat.room import ChatLimits
from tidecast.config import ConfigError, Settings
from tidecast.db.chat import ChatLog
from tidecast.db.leases import Leases
from tidecast.db.recordings import Recordings
from tidecast.ingest.rtmp.server import RTMPServer
from tidecast.ingest.sessions import PublishGate
from tidecast.node import admin_secrets, open_database, start_http
from tidecast.origin.app import AppContext, create_app
from tidecast.origin.cache import HotCache
from tidecast.origin.metrics import MetricsListener
from tidecast.packager.leader import StreamLeadership
from tidecast.packager.service import Packager
from tidecast.recorder.service import Recorder
from tidecast.segmenter.service import SegmenterService
from tidecast.store.base import Store
from tidecast.store.factory import open_store, store_url_of
from tidecast.store.local import LocalStore
from tidecast.transcode.coordinator import TranscodeCoordinator

log = logging.getLogger("tidecast.roles")


def _bus(settings: Settings, role: str) -> NatsBus:
    if not settings.bus_url:
        raise ConfigError(f"the {role} role needs a bus: set bus_url (nats://host:4222)")
    return NatsBus(settings.bus_url, prefix=settings.bus_prefix, ack_wait=settings.job_ack_wait)


def _store(settings: Settings) -> Store:
    return open_store(settings.store_url, settings.media_dir)


async def _open_store(settings: Settings) -> Store:
    store = _store(settings)
    ensure = getattr(store, "ensure_bucket", None)
    if ensure is not None:
        await ensure()
    return store


class IngestNode:
    """RTMP in, source segments + transcode jobs out."""

    role = "ingest"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = open_database(settings)
        self.bus = _bus(settings, self.role)
        self.store: Store = _store(settings)
        self.segmenter = SegmenterService(self.store, self.bus, settings.segment_target, settings.rungs(),
                                          settings.x264_preset,
                                          lag_threshold=settings.transcode_lag_threshold)  # fmt: skip
        self.gate = PublishGate(self.db, self.segmenter, self.bus, settings.reconnect_grace)
        self.rtmp = RTMPServer(
            self.gate, settings.host, settings.rtmp_port, settings.rtmp_app,
            handshake_timeout=settings.rtmp_handshake_timeout, idle_timeout=settings.rtmp_idle_timeout,
        )  # fmt: skip

    def describe(self) -> str:
        return f"RTMP on {self.settings.host}:{self.rtmp.port}"

    async def start(self) -> None:
        self.store = await _open_store(self.settings)
        self.segmenter.store = self.store
        await self.bus.start()
        await self.rtmp.start()

    async def aclose(self) -> None:
        await self.rtmp.aclose()
        await self.gate.aclose()
        await self.segmenter.aclose()
        await self.bus.aclose()
        self.db.close()


class WorkerNode:
    """Transcode worker processes fed from the shared work queue."""

    role = "worker"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bus = _bus(settings, self.role)
        self.coordinator: TranscodeCoordinator | None = None

    def describe(self) -> str:
        n = len(self.coordinator.workers) if self.coordinator else 0
        return f"{n} transcode worker process(es)"

    async def start(self) -> None:
        store = await _open_store(self.settings)
        await self.bus.start()
        self.coordinator = TranscodeCoordinator(
            self.bus, store_url_of(store), workers=self.settings.workers,
            max_attempts=self.settings.transcode_attempts, progress_every=self.settings.job_ack_wait / 3,
        )  # fmt: skip
        await self.coordinator.start()
        await self.bus.ready()

    async def aclose(self) -> None:
        if self.coordinator is not None:
            await self.coordinator.aclose()
        await self.bus.aclose()


class PackagerNode:
    """Playlists and recordings, for the streams this packager leads."""

    role = "packager"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = open_database(settings)
        self.bus = _bus(settings, self.role)
        self.recordings = Recordings(self.db)
        self.leadership = StreamLeadership(Leases(self.db), settings.lease_ttl)
        self.packager: Packager | None = None
        self.recorder: Recorder | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def describe(self) -> str:
        return f"packager {self.leadership.holder}"

    async def start(self) -> None:
        store = await _open_store(self.settings)
        await self.bus.start()
        self.recorder = Recorder(store, self.recordings)
        rungs = self.settings.rungs()
        self.packager = Packager(
            store, self.bus, window=self.settings.playlist_window,
            target_duration=self.settings.segment_target,
            include_source=self.settings.source_rendition or not rungs, recorder=self.recorder,
            leadership=self.leadership, takeover=self.recordings,
        )  # fmt: skip
        await self.packager.start()
        await self.bus.ready()
        self._sweeper = asyncio.create_task(self._sweep(), name="packager-sweep")

    async def _sweep(self, every: float = 600.0) -> None:
        """Broadcasts whose ingest died close after a quiet spell; retention runs."""
        assert self.recorder is not None
        while True:
            try:
                await self.recorder.recover(stale_after=self.settings.reconnect_grace + 120)
                live = set(
                    v[0]
                    for v in (await asyncio.to_thread(self.recordings.live_broadcasts)).values()
                )
                await self.recorder.apply_retention(live)
            except Exception:
                log.exception("recovery/retention sweep failed; trying again later")
            await asyncio.sleep(every)

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.packager is not None:
            await self.packager.aclose()
        await self.bus.aclose()
        self.db.close()


class LiveDirectory:
    """Which broadcast each stream has live, read from the database every second
    (an origin has no publishers of its own; chat messages need the broadcast)."""

    def __init__(self, recordings: Recordings) -> None:
        self.recordings = recordings
        self.live: dict[str, tuple[str, float]] = {}
        self._task: asyncio.Task[None] | None = None

    def lookup(self, stream: str) -> tuple[str, float] | None:
        return self.live.get(stream)

    async def refresh(self) -> None:
        self.live = await asyncio.to_thread(self.recordings.live_broadcasts)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="live-directory")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.refresh()
            except Exception:
                log.exception("could not read live broadcasts; keeping the last view")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class OriginNode:
    """``tidecast origin``: HLS objects, pages, the JSON API and chat over what the
    other roles stored. Run several behind an edge (``tidecast edge-config``).
    Without a bus it serves a data directory alone (no chat fan-out)."""

    role = "origin"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = open_database(settings)
        self.admin_token, chat_secret = admin_secrets(settings)
        self.store: Store = _store(settings)
        self.bus: NatsBus | None = _bus(settings, self.role) if settings.bus_url else None
        self.recordings = Recordings(self.db)
        self.directory = LiveDirectory(self.recordings)
        from tidecast.bus.memory import MemoryBus  # a gate with no publishers: API plumbing only

        self.gate = PublishGate(self.db, SegmenterService(self.store, MemoryBus(), settings.segment_target),
                                MemoryBus(), settings.reconnect_grace)  # fmt: skip
        self.recorder = Recorder(self.store, self.recordings)
        self.cache = (
            None if isinstance(self.store, LocalStore)
            else HotCache(self.store, settings.origin_cache_mb << 20, playlist_ttl=settings.segment_target / 8)
        )  # fmt: skip
        blocked = tuple(w.strip() for w in settings.chat_blocked_words.split(",") if w.strip())
        self.chat = (
            ChatHub(self.bus, ChatLog(self.db), self.directory.lookup, limits=ChatLimits(blocked_words=blocked))
            if self.bus is not None else None
        )  # fmt: skip
        self.app = create_app(AppContext(
            settings, self.db, self.gate, self.admin_token, time.time(), None, self.recorder, self.chat,
            chat_secret, cache=self.cache, live_from_db=True,
            media_root=self.store.root if isinstance(self.store, LocalStore) else None,
        ))  # fmt: skip
        # backpressure metrics come from the ingest nodes' lag reports
        self.metrics = MetricsListener(self.bus) if self.bus is not None else None
        self._http: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.http_port = settings.http_port

    def describe(self) -> str:
        return f"HTTP on {self.settings.url_host}:{self.http_port}"

    async def start(self) -> None:
        if not isinstance(self.store, LocalStore):
            await _open_store(self.settings)
        if self.bus is not None:
            await self.bus.start()
        if self.metrics is not None:
            self.metrics.start()
        if self.chat is not None:
            await self.chat.start()
        if self.bus is not None:
            await self.bus.ready()
        await self.directory.refresh()
        self.directory.start()
        self._http, self._task, self.http_port = await start_http(self.app, self.settings, self.store)
        log.info("origin listening on %s:%d", self.settings.host, self.http_port)

    async def aclose(self) -> None:
        if self.chat is not None:
            await self.chat.aclose()
        if self._http is not None and self._task is not None:
            self._http.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.directory.aclose()
        if self.metrics is not None:
            await self.metrics.aclose()
        if self.bus is not None:
            await self.bus.aclose()
        self.db.close()


class RoleNode(Protocol):
    role: str

    def describe(self) -> str: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


ROLES: dict[str, Callable[[Settings], RoleNode]] = {
    "ingest": IngestNode,
    "worker": WorkerNode,
    "packager": PackagerNode,
    "origin": OriginNode,
}
