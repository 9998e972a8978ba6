"""Publish sessions: who may publish, which streams are live, and the broadcast lifecycle.

``PublishGate.open`` is the one place that turns a stream key into a live
broadcast: it looks the key up, refuses unknown keys and streams that already
have a publisher, records the broadcast, and opens the segmenter sink. Every
ingest protocol (RTMP now, SRT/WHIP later) goes through it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tidecast.db.repo import Database
from tidecast.segmenter.service import BroadcastSegmenter, SegmenterService

log = logging.getLogger("tidecast.ingest")


class PublishRefused(Exception):
    """A publish request that must be refused; ``code`` is the RTMP status code to send."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


def new_broadcast_id(now: float) -> str:
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


@dataclass(slots=True)
class LiveSession:
    stream: str
    stream_id: int
    broadcast: str
    started_at: float
    remote: str
    protocol: str
    sink: BroadcastSegmenter
    metadata: dict[str, object] = field(default_factory=dict)
    video: str = ""  # e.g. "avc1.64001f 1920x1080"
    audio: str = ""
    closed: bool = False


class PublishGate:
    def __init__(self, db: Database, segmenter: SegmenterService) -> None:
        self.db = db
        self.segmenter = segmenter
        self.live: dict[str, LiveSession] = {}
        self.refused = 0

    async def open(self, key: str, remote: str, protocol: str) -> LiveSession:
        if not key:
            self.refused += 1
            raise PublishRefused("NetStream.Publish.BadName", "a stream key is required")
        info = await asyncio.to_thread(self.db.stream_for_key, key)
        if info is None:
            self.refused += 1
            log.warning("refused publish from %s: unknown stream key", remote)
            raise PublishRefused("NetStream.Publish.BadName", "unknown stream key")
        if info.name in self.live:
            self.refused += 1
            log.warning("refused publish to %r from %s: already live", info.name, remote)
            raise PublishRefused(
                "NetStream.Publish.BadName", f"stream {info.name!r} already has a publisher"
            )
        now = time.time()
        broadcast = new_broadcast_id(now)
        sink = self.segmenter.open(info.name, broadcast, now)
        session = LiveSession(info.name, info.id, broadcast, now, remote, protocol, sink)
        self.live[info.name] = session  # claimed before any await: no double publish
        try:
            await asyncio.to_thread(
                self.db.start_broadcast, info.id, broadcast, datetime.fromtimestamp(now, UTC)
            )
        except Exception:
            self.live.pop(info.name, None)
            await sink.finish("database error")
            raise
        log.info("%s: live from %s over %s (broadcast %s)", info.name, remote, protocol, broadcast)
        return session

    async def close(self, session: LiveSession, reason: str) -> None:
        if session.closed:
            return
        session.closed = True
        try:
            await session.sink.finish(reason)
        finally:
            if self.live.get(session.stream) is session:
                del self.live[session.stream]
            await asyncio.to_thread(
                self.db.end_broadcast, session.broadcast, datetime.now(UTC), reason
            )
            log.info("%s: offline (%s)", session.stream, reason)

    async def aclose(self) -> None:
        for session in list(self.live.values()):
            await self.close(session, "server shutdown")
