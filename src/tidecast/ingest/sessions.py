"""Publish sessions: who may publish, which streams are live, and the broadcast lifecycle.

``PublishGate.open`` is the one place that turns a stream key into a live
broadcast: it looks the key up, refuses unknown keys and streams that already
have a publisher, records the broadcast, and opens the segmenter sink. Every
ingest protocol (RTMP now, SRT/WHIP later) goes through it.

A publisher that drops and comes back within the reconnect grace period
continues the same broadcast (a new *part*: sequence numbers go on, the
playlists get an EXT-X-DISCONTINUITY). When the grace period runs out — or at
shutdown — the gate announces ``BroadcastFinished`` and closes the broadcast.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tidecast.bus.base import Bus
from tidecast.db.recordings import Recordings
from tidecast.db.repo import Database
from tidecast.messages import BroadcastFinished
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
    part: int = 0
    metadata: dict[str, object] = field(default_factory=dict)
    video: str = ""  # e.g. "avc1.64001f 1920x1080"
    audio: str = ""
    closed: bool = False


@dataclass(slots=True)
class Paused:
    """A broadcast whose publisher left less than the grace period ago."""

    broadcast: str
    started_at: float
    next_sequence: int
    timer: asyncio.Task[None]


class PublishGate:
    def __init__(
        self, db: Database, segmenter: SegmenterService, bus: Bus, reconnect_grace: float = 30.0
    ) -> None:
        self.db = db
        self.recordings = Recordings(db)
        self.segmenter = segmenter
        self.bus = bus
        self.reconnect_grace = reconnect_grace
        self.live: dict[str, LiveSession] = {}
        self.paused: dict[str, Paused] = {}
        self.refused = 0
        self._claimed: set[str] = set()  # streams whose publish is being set up

    async def open(self, key: str, remote: str, protocol: str) -> LiveSession:
        if not key:
            self.refused += 1
            raise PublishRefused("NetStream.Publish.BadName", "a stream key is required")
        info = await asyncio.to_thread(self.db.stream_for_key, key)
        if info is None:
            self.refused += 1
            log.warning("refused publish from %s: unknown stream key", remote)
            raise PublishRefused("NetStream.Publish.BadName", "unknown stream key")
        if info.name in self.live or info.name in self._claimed:
            self.refused += 1
            log.warning("refused publish to %r from %s: already live", info.name, remote)
            raise PublishRefused(
                "NetStream.Publish.BadName", f"stream {info.name!r} already has a publisher"
            )
        now = time.time()
        paused = self.paused.pop(info.name, None)
        if paused is not None:  # back within the grace period: same broadcast, next part
            paused.timer.cancel()
            broadcast, started_at, first_seq = paused.broadcast, paused.started_at, paused.next_sequence
        else:
            broadcast, started_at, first_seq = new_broadcast_id(now), now, 0
        self._claimed.add(info.name)  # claimed before any await: no double publish
        try:
            if paused is None:
                recording = (await asyncio.to_thread(self.recordings.retention, info.name)).recording
                await asyncio.to_thread(
                    self.recordings.start, info.id, broadcast, datetime.fromtimestamp(now, UTC),
                    info.title or info.name, recording,
                )  # fmt: skip
                part = 0
            else:
                part = await asyncio.to_thread(self.recordings.resume, broadcast)
        finally:
            self._claimed.discard(info.name)
        sink = self.segmenter.open(info.name, broadcast, now, first_sequence=first_seq, part=part)
        session = LiveSession(info.name, info.id, broadcast, started_at, remote, protocol, sink, part)
        self.live[info.name] = session
        what = f"resumed broadcast {broadcast} (part {part})" if part else f"broadcast {broadcast}"
        log.info("%s: live from %s over %s (%s)", info.name, remote, protocol, what)
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
            log.info("%s: publisher gone (%s)", session.stream, reason)
        if reason == "server shutdown" or self.reconnect_grace <= 0:
            await self._finish(session.stream, session.broadcast, reason)
            return
        timer = asyncio.create_task(self._finish_later(session.stream, session.broadcast, reason))
        self.paused[session.stream] = Paused(
            session.broadcast, session.started_at, session.sink.core.cut_count, timer
        )

    async def _finish_later(self, stream: str, broadcast: str, reason: str) -> None:
        await asyncio.sleep(self.reconnect_grace)
        p = self.paused.get(stream)
        if p is not None and p.broadcast == broadcast:
            del self.paused[stream]
            await self._finish(stream, broadcast, reason)

    async def _finish(self, stream: str, broadcast: str, reason: str) -> None:
        now = time.time()
        await asyncio.to_thread(self.recordings.end, broadcast, datetime.fromtimestamp(now, UTC), reason)
        await self.bus.publish(f"broadcast.{stream}", BroadcastFinished(stream, broadcast, now, reason))
        log.info("%s: broadcast %s finished (%s)", stream, broadcast, reason)

    async def aclose(self) -> None:
        for session in list(self.live.values()):
            await self.close(session, "server shutdown")
        for stream, p in list(self.paused.items()):
            p.timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await p.timer
            del self.paused[stream]
            await self._finish(stream, p.broadcast, "server shutdown")
