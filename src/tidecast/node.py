"""A tidecast node: every role in one process (``tidecast serve``).

The same role objects a deployment runs one per process (``roles.py``),
composed around one bus (in-process, or NATS with ``bus_url``), one database
and one store. ``start()`` brings them up in data-path order, consumers before
producers: the packager (after closing broadcasts a crash left open), the
origin's consumers, the transcode workers, then the HTTP listener and RTMP
ingest. ``aclose()`` stops them in reverse — publishers are closed, their last
segments finished, transcoded and packaged, playlists ended, and no ffmpeg or
socket is left behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tidecast.bus.nats import NatsBus
from tidecast.config import Settings
from tidecast.db.repo import NewStream
from tidecast.ingest.rtmp.server import RTMPServer
from tidecast.ingest.sessions import PublishGate
from tidecast.origin.admin import load_or_create_admin_token
from tidecast.packager.service import Packager
from tidecast.roles import (
    IngestNode,
    OriginNode,
    PackagerNode,
    Shared,
    WorkerNode,
    ensure_bucket,
    open_bus,
    open_database,
    open_media,
)
from tidecast.transcode.coordinator import TranscodeCoordinator

log = logging.getLogger("tidecast.node")

DEFAULT_STREAM = "main"


@dataclass(frozen=True, slots=True)
class FirstRun:
    admin_token: str | None  # set only when it was just generated
    default_stream: NewStream | None


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = open_database(settings)
        admin_token, new_token = load_or_create_admin_token(settings.data_dir)
        if settings.admin_token:  # shared by a deployment's nodes
            admin_token, new_token = settings.admin_token, False
        default = None
        if not self.db.list_streams():
            default = self.db.create_stream(DEFAULT_STREAM, "tidecast default stream")
        self.first_run = FirstRun(admin_token if new_token else None, default)
        self.bus = open_bus(settings)
        self.shared = Shared(self.bus, self.db, open_media(settings))
        self.packaging = PackagerNode(settings, self.shared, alone=True)
        self.workers = WorkerNode(settings, self.shared) if settings.rungs() else None
        self.ingest = IngestNode(settings, self.shared)
        self.origin = OriginNode(
            settings, self.shared, live=self.ingest.gate, admin_token=admin_token,
            transcode=self.workers.coordinator if self.workers else None,
        )  # fmt: skip

    # what the CLI, the benchmarks and the tests look at
    @property
    def http_port(self) -> int:
        return self.origin.http_port

    @property
    def rtmp(self) -> RTMPServer:
        return self.ingest.rtmp

    @property
    def gate(self) -> PublishGate:
        return self.ingest.gate

    @property
    def packager(self) -> Packager:
        return self.packaging.packager

    @property
    def transcoder(self) -> TranscodeCoordinator | None:
        return self.workers.coordinator if self.workers else None

    async def start(self) -> None:
        await ensure_bucket(self.shared.store)
        if isinstance(self.bus, NatsBus):
            await self.bus.start()
        await self.packaging.start()
        await self.origin.start()
        if self.workers is not None:
            await self.workers.start()
        await self.bus.ready()  # every consumer is listening before the first publisher
        await self.origin.listen()
        await self.ingest.start()
        log.info("HTTP origin listening on %s:%d", self.settings.host, self.http_port)

    async def aclose(self) -> None:
        log.info("shutting down")
        await self.origin.stop_chat()
        await self.ingest.aclose()  # publishers closed, their last segments stored
        if self.workers is not None:
            await self.workers.aclose()  # finishes running jobs, stops the workers
        await self.packaging.aclose()  # handles what is still queued, writes it out
        await self.origin.aclose()
        await self.bus.aclose()
        self.db.close()
