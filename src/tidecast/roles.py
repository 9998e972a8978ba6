"""The roles: each stage of the pipeline as a component that runs alone or beside the others.

``tidecast serve`` runs every role in one process on embedded defaults
(``node.Node`` composes these same objects around one in-process bus, one
database and one store). A deployment instead runs any number of each role,
on any hosts, sharing one configuration (``--config tidecast.toml`` or
``TIDECAST_*`` variables):

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

Each role takes the resources it meets the others in (``Shared``) or, alone,
opens its own; it starts and closes only what it opened.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import uvicorn

from tidecast.bus.base import Bus
from tidecast.bus.memory import MemoryBus
from tidecast.bus.nats import NatsBus
from tidecast.chat.hub import ChatHub
from tidecast.chat.room import ChatLimits
from tidecast.config import ConfigError, Settings
from tidecast.db import StaleEpoch as StaleLease
from tidecast.db import transient
from tidecast.db.chat import ChatLog, ChatSanctions
from tidecast.db.leases import Leases
from tidecast.db.recordings import Recordings
from tidecast.db.repo import Database
from tidecast.ingest.access import AddressRules
from tidecast.ingest.auth import IngestAuth
from tidecast.ingest.bans import BanPolicy, MemoryBans
from tidecast.ingest.rtmp.server import RTMPServer
from tidecast.ingest.sessions import PublishGate
from tidecast.ingest.tokens import IngestTokens, JWKSKeys
from tidecast.ingest.webhooks import Webhooks
from tidecast.live import LiveBroadcast, LiveStatus
from tidecast.netaddr import TrustedProxies
from tidecast.origin.admin import admin_secrets, ingest_token_secret, playback_secret
from tidecast.origin.app import AppContext, TranscodeStatus, create_app, operator_app
from tidecast.origin.blocking import max_hold
from tidecast.origin.cache import HotCache
from tidecast.origin.metrics import MetricsListener
from tidecast.origin.playback import PlaybackGuard
from tidecast.origin.reload import ReloadService
from tidecast.origin.server import connection_table, start_http, start_https, start_operator_http
from tidecast.packager.hls import epoch_of
from tidecast.packager.leader import StreamLeadership
from tidecast.packager.service import Packager
from tidecast.recorder.download import Downloads
from tidecast.recorder.service import Recorder
from tidecast.segmenter.service import SegmenterService
from tidecast.store.base import VersionedStore
from tidecast.store.factory import StoreRetry, open_store, store_url_of, unwrap
from tidecast.store.fenced import FencedWriter
from tidecast.store.fenced import StaleEpoch as StaleObject
from tidecast.store.local import LocalStore
from tidecast.store.retrying import RetryingStore
from tidecast.store.retrying import is_transient as store_transient
from tidecast.supervise import Supervisor
from tidecast.tls import server_context
from tidecast.transcode.coordinator import TranscodeCoordinator
from tidecast.transcode.ladder import Ladder

log = logging.getLogger("tidecast.roles")

ORIGIN_STORE_DEADLINE = 3.0  # s a viewer's request rides out the store (players retry anyway)


@dataclass(slots=True)
class Shared:
    """What roles in one process meet in; whoever made it starts and closes it."""

    bus: Bus
    db: Database
    store: VersionedStore  # retrying


def open_bus(settings: Settings, role: str | None = None) -> MemoryBus | NatsBus:
    if settings.bus_url:
        return NatsBus(settings.bus_url, prefix=settings.bus_prefix, ack_wait=settings.job_ack_wait)
    if role is not None:
        raise ConfigError(f"the {role} role needs a bus: set bus_url (nats://host:4222)")
    return MemoryBus()


def open_database(settings: Settings) -> Database:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Database(settings.db_url)


def open_media(settings: Settings, deadline: float | None = None) -> VersionedStore:
    """The configured store, retrying transient errors for ``deadline`` s per operation."""
    return open_store(settings.store_url, settings.media_dir,
                      retry=StoreRetry(deadline=deadline or settings.store_retry_deadline))  # fmt: skip


def ingest_tokens(settings: Settings) -> IngestTokens:
    """The ingest JWTs this deployment issues and accepts (and an external issuer's)."""
    jwks = JWKSKeys(settings.ingest_jwks_url, timeout=settings.webhook_timeout) if settings.ingest_jwks_url else None
    return IngestTokens(ingest_token_secret(settings), settings.ingest_token_audience, jwks=jwks,
                        jwks_issuer=settings.ingest_jwks_issuer)  # fmt: skip


def ingest_auth(settings: Settings, db: Database) -> IngestAuth:
    """Who may publish, from the settings (``ingest/auth.py``)."""
    hooks = None
    if settings.on_publish_url or settings.on_publish_done_url:
        hooks = Webhooks(settings.on_publish_url, settings.on_publish_done_url,
                         settings.webhook_timeout, settings.webhook_timeout_rule)  # fmt: skip
    bans = MemoryBans(BanPolicy(settings.ingest_max_failures, settings.ingest_failure_window,
                                settings.ingest_ban_seconds))  # fmt: skip
    return IngestAuth(db, tokens=ingest_tokens(settings), bans=bans, webhooks=hooks,
                      rules=AddressRules.parse(settings.ingest_allow, settings.ingest_deny))  # fmt: skip


async def ensure_bucket(store: VersionedStore) -> None:
    ensure = getattr(unwrap(store), "ensure_bucket", None)
    if ensure is not None:
        await ensure()


def is_transient(exc: BaseException) -> bool:
    """A store or database error worth trying again."""
    return store_transient(exc) or transient.is_transient(exc)


class _Owned:
    """The resources a role opened itself (alone) and so must start and close."""

    def __init__(
        self, settings: Settings, shared: Shared | None, role: str, *, db: bool,
        bus_required: bool = True,
    ) -> None:  # fmt: skip
        self.bus_owned = shared is None
        self.bus: Bus = shared.bus if shared else open_bus(settings, role if bus_required else None)
        self.db_owned = shared is None and db
        self.db: Database | None = shared.db if shared else (open_database(settings) if db else None)
        self.store: VersionedStore = shared.store if shared else open_media(settings)

    async def start(self) -> None:
        if self.bus_owned:
            await ensure_bucket(self.store)
            if isinstance(self.bus, NatsBus):
                await self.bus.start()

    async def ready(self) -> None:
        if self.bus_owned:
            await self.bus.ready()

    async def aclose(self) -> None:
        if self.bus_owned:
            await self.bus.aclose()
        if self.db_owned and self.db is not None:
            self.db.close()


class IngestNode:
    """RTMP in, source segments + transcode jobs out."""

    role = "ingest"

    def __init__(self, settings: Settings, shared: Shared | None = None) -> None:
        self.settings = settings
        self.own = _Owned(settings, shared, self.role, db=True)
        assert self.own.db is not None
        self.bus, self.db, self.store = self.own.bus, self.own.db, self.own.store
        self.segmenter = SegmenterService(
            self.store, self.bus, settings.segment_target, Ladder(settings.rungs(), settings.passthrough), settings.x264_preset,
            settings.transcode_lag_threshold, max_segment_duration=settings.max_segment_duration,
            max_segment_bytes=settings.segment_max_mb << 20,
            # a publisher waits out one store write's retries before it is refused
            backpressure_deadline=settings.store_retry_deadline + 30,
            part_target=settings.part_target if settings.ll_hls else 0.0,
        )  # fmt: skip
        self.gate = PublishGate(self.db, self.segmenter, self.bus, settings.reconnect_grace,
                                auth=ingest_auth(settings, self.db))  # fmt: skip
        self.rtmp = RTMPServer(
            self.gate, settings.host, settings.rtmp_port, settings.rtmp_app,
            handshake_timeout=settings.rtmp_handshake_timeout, idle_timeout=settings.rtmp_idle_timeout,
            max_connections=settings.rtmp_max_connections,
            max_per_ip=settings.rtmp_max_connections_per_ip,
            tls=server_context(settings), tls_port=settings.rtmps_port,
        )  # fmt: skip

    def describe(self) -> str:
        tls = f", RTMPS on {self.settings.host}:{self.rtmp.tls_port}" if self.rtmp.tls_port else ""
        return f"RTMP on {self.settings.host}:{self.rtmp.port}{tls}"

    async def start(self) -> None:
        await self.own.start()
        await self.own.ready()
        await self.rtmp.start()

    async def aclose(self) -> None:
        await self.rtmp.aclose()  # closes publishers: the gate finishes their broadcasts
        await self.gate.aclose()
        await self.segmenter.aclose()
        await self.own.aclose()


class WorkerNode:
    """Transcode worker processes fed from the shared work queue."""

    role = "worker"

    def __init__(self, settings: Settings, shared: Shared | None = None) -> None:
        self.settings = settings
        self.own = _Owned(settings, shared, self.role, db=False)
        self.bus = self.own.bus
        self.coordinator = TranscodeCoordinator(
            self.bus, store_url_of(self.own.store), workers=self.settings.workers,
            max_attempts=self.settings.transcode_attempts, progress_every=self.settings.job_ack_wait / 3,
            heal=self.settings.heal,
        )  # fmt: skip

    def describe(self) -> str:
        heal = " + 1 heal worker" if self.settings.heal else ""
        return f"{len(self.coordinator.workers)} transcode worker process(es){heal}"

    async def start(self) -> None:
        await self.own.start()
        await self.coordinator.start()
        await self.own.ready()

    async def aclose(self) -> None:
        await self.coordinator.aclose()  # finishes running jobs, stops the workers
        await self.own.aclose()


class PackagerNode:
    """Playlists and recordings, for the streams this packager leads. ``alone``: the only
    packager (``tidecast serve``): it leads every stream, and broadcasts left open at
    start-up were left by a crash."""

    role = "packager"

    def __init__(self, settings: Settings, shared: Shared | None = None, *, alone: bool = False) -> None:
        self.settings = settings
        self.alone = alone
        self.own = _Owned(settings, shared, self.role, db=True)
        assert self.own.db is not None
        self.bus, self.db, self.store = self.own.bus, self.own.db, self.own.store
        self.recordings = Recordings(self.db)
        self.leadership = None if alone else StreamLeadership(Leases(self.db), settings.lease_ttl)
        self.fenced = FencedWriter(self.store)
        self.recorder = Recorder(self.store, self.recordings, put_playlist=self._put)
        rungs = settings.rungs()
        self.packager = Packager(
            self.store, self.bus, window=settings.playlist_window, target_duration=settings.segment_target,
            include_source=settings.source_rendition or not rungs, recorder=self.recorder,
            leadership=self.leadership, takeover=self.recordings, put=self._put,
            refused=(StaleObject, StaleLease), gap_after=settings.gap_after,
            end_gap_after=settings.gap_after + settings.transcode_lag_threshold + 2 * settings.segment_target,
            transient=is_transient, ll_hls=settings.ll_hls, part_target=settings.part_target,
        )  # fmt: skip
        self.sup = Supervisor("packager-node")

    async def _put(self, key: str, data: bytes, epoch: int) -> None:
        """Playlists are written fenced: refused once a newer leader's epoch is stored."""
        await self.fenced.put(key, data, epoch=epoch, epoch_of=epoch_of)

    def describe(self) -> str:
        return "packager (alone)" if self.leadership is None else f"packager {self.leadership.holder}"

    async def start(self) -> None:
        await self.own.start()
        if self.alone:
            await self.recorder.recover()  # every broadcast open now was left by a crash
        await self.packager.start()
        await self.own.ready()
        self.sup.spawn("packager-sweep", self._sweep)

    async def _sweep(self, every: float = 600.0) -> None:
        """Broadcasts whose ingest died close after a quiet spell; retention runs."""
        while True:
            await asyncio.sleep(every)
            try:
                await self.recorder.recover(stale_after=self.settings.reconnect_grace + 120)
                live = {v[0] for v in (await transient.call(
                    "live_broadcasts", self.recordings.live_broadcasts, deadline=10)).values()}  # fmt: skip
                await self.recorder.apply_retention(live)
            except Exception:
                log.exception("recovery/retention sweep failed; trying again later")

    async def aclose(self) -> None:
        await self.sup.aclose()
        await self.packager.aclose()  # handles what is still queued, writes it out, then stops
        await self.own.aclose()


class LiveDirectory:
    """``LiveStatus`` of a node without publishers of its own (the origin role): the open
    broadcasts, read from the database every second."""

    def __init__(self, recordings: Recordings) -> None:
        self.recordings = recordings
        self._live: dict[str, LiveBroadcast] = {}
        self.sup = Supervisor("live-directory")

    def live(self) -> Mapping[str, LiveBroadcast]:
        return self._live

    async def refresh(self) -> None:
        rows = await transient.call("live_broadcasts", self.recordings.live_broadcasts, deadline=2.0)
        self._live = {s: LiveBroadcast(s, b, t) for s, (b, t) in rows.items()}

    def start(self) -> None:
        self.sup.spawn("live-directory", self._loop)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 - kept going on the last view, retried in 1 s
                log.warning("could not read live broadcasts (%r); keeping the last view", exc)

    async def aclose(self) -> None:
        await self.sup.aclose()


def chat_lookup(live: LiveStatus) -> Callable[[str], tuple[str, float] | None]:
    """The broadcast a chat message belongs to: live, or paused within the grace period."""

    def lookup(stream: str) -> tuple[str, float] | None:
        b = live.live().get(stream)
        return (b.broadcast, b.started_at) if b is not None else None

    return lookup


class OriginNode:
    """HLS objects, pages, the JSON API and chat over what the other roles stored. Run
    several behind an edge (``tidecast edge-config``). Without a bus (alone, no
    ``bus_url``) it serves a data directory with chat local to this node."""

    role = "origin"

    def __init__(
        self, settings: Settings, shared: Shared | None = None, *, live: LiveStatus | None = None,
        transcode: TranscodeStatus | None = None, admin_token: str | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        # without a bus_url an origin alone serves a data directory, chat local to it
        self.own = _Owned(settings, shared, self.role, db=True, bus_required=False)
        assert self.own.db is not None
        self.bus, self.db = self.own.bus, self.own.db
        # viewers' reads give up sooner than the pipeline's writes
        self.store: VersionedStore = RetryingStore(unwrap(self.own.store),
                                                   StoreRetry(deadline=ORIGIN_STORE_DEADLINE))  # fmt: skip
        token, chat_secret = admin_secrets(settings)
        self.admin_token = admin_token or token
        self.recordings = Recordings(self.db)
        self.directory = LiveDirectory(self.recordings) if live is None else None
        self.live: LiveStatus = live or self.directory  # type: ignore[assignment]
        self.recorder = Recorder(self.store, self.recordings)
        local = isinstance(unwrap(self.store), LocalStore)
        self.cache = None if local else HotCache(self.store, settings.origin_cache_mb << 20,
                                                 playlist_ttl=settings.segment_target / 8)  # fmt: skip
        blocked = tuple(w.strip() for w in settings.chat_blocked_words.split(",") if w.strip())
        self.chat = ChatHub(self.bus, ChatLog(self.db), chat_lookup(self.live),
                            limits=ChatLimits(blocked_words=blocked), sanctions=ChatSanctions(self.db),
                            max_per_ip=settings.chat_max_per_ip)  # fmt: skip
        self.downloads = Downloads(self.store, settings.data_dir / "download-tmp",
                                   max_builds=settings.download_max_builds)  # fmt: skip
        root = unwrap(self.store)
        # LL-HLS: blocking playlist requests and hinted parts wait here, woken by the
        # packager's PlaylistUpdated notifications (and a store poll)
        self.reload = ReloadService(self.store, self.bus, max_hold=max_hold(settings.segment_target))
        # playback tokens and AES-128, with the secret the edge verifies tokens with too
        self.guard = PlaybackGuard(self.db, playback_secret(settings), self.live,
                                   rotation=settings.key_rotation)  # fmt: skip
        self.ctx = AppContext(
            settings, self.db, self.live, self.admin_token, time.time(), transcode, self.recorder,
            self.chat, chat_secret, cache=self.cache,
            media_root=root.root if isinstance(root, LocalStore) else None, reload=self.reload,
            ingest_tokens=ingest_tokens(settings), guard=self.guard,
            proxies=TrustedProxies.parse(settings.trusted_proxies), downloads=self.downloads,
        )  # fmt: skip
        self.app = create_app(self.ctx)
        # backpressure metrics come from the ingest nodes' lag reports
        self.metrics = MetricsListener(self.bus)
        self._http: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._https: uvicorn.Server | None = None
        self._https_task: asyncio.Task[None] | None = None
        # HTTP connections per client address and in all, over both listeners
        self.connections = connection_table(settings)
        self.http_port = settings.http_port
        self.https_port: int | None = None
        self._operator: tuple[uvicorn.Server, asyncio.Task[None]] | None = None
        self.operator_port = 0

    def describe(self) -> str:
        return f"HTTP on {self.settings.url_host}:{self.http_port}"

    async def start(self) -> None:
        """Everything but the listening socket (``listen``): consumers first."""
        await self.own.start()
        self.metrics.start()
        self.reload.start()
        await self.chat.start()
        if self.directory is not None:
            await self.directory.refresh()
            self.directory.start()

    async def listen(self) -> None:
        await self.own.ready()
        self._http, self._task, self.http_port = await start_http(self.app, self.settings, self.store,
                                                                  self.reload, self.guard,
                                                                  self.connections)  # fmt: skip
        log.info("origin listening on %s:%d", self.settings.host, self.http_port)
        if self.settings.tls:
            server_context(self.settings)  # a clear error for a bad certificate or key
            self._https, self._https_task, self.https_port = await start_https(self.app, self.settings,
                                                                               self.connections)  # fmt: skip
            log.info("origin listening on %s:%d (HTTPS)", self.settings.host, self.https_port)
        if self.settings.operator_listen:
            server, task, self.operator_port = await start_operator_http(operator_app(self.ctx), self.settings)
            self._operator = (server, task)
            log.info("operator endpoints (/metrics, /api/v1/transcode) on %s, no token needed there",
                     self.settings.operator_listen)  # fmt: skip

    async def stop_chat(self) -> None:
        await self.chat.aclose()

    async def aclose(self) -> None:
        await self.chat.aclose()
        for server, task in [(self._http, self._task), (self._https, self._https_task),
                             self._operator or (None, None)]:  # fmt: skip
            if server is not None and task is not None:
                server.should_exit = True
                await asyncio.gather(task, return_exceptions=True)
        await self.downloads.aclose()
        if self.directory is not None:
            await self.directory.aclose()
        await self.reload.aclose()
        if self.cache is not None:
            await self.cache.aclose()
        await self.metrics.aclose()
        await self.own.aclose()


class StandaloneOrigin(OriginNode):
    """``tidecast origin`` as a process of its own: listens as part of start()."""

    async def start(self) -> None:
        await super().start()
        await self.listen()


class RoleNode(Protocol):
    role: str

    def describe(self) -> str: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


ROLES: dict[str, Callable[[Settings], RoleNode]] = {
    "ingest": IngestNode,
    "worker": WorkerNode,
    "packager": PackagerNode,
    "origin": StandaloneOrigin,
}
