"""Publish sessions: who may publish, which streams are live, and the broadcast lifecycle.

``PublishGate.open`` is the one place that turns a stream key into a live
broadcast: its policy (``IngestAuth``: keys, ingest tokens, address rules,
bans, the ``on_publish`` webhook) admits or refuses the publisher, it refuses
streams that already have a publisher, records the broadcast, and opens the
segmenter sink. Every ingest protocol (RTMP/RTMPS now, SRT/WHIP later) goes
through it; ``close`` sends ``on_publish_done``.

A publisher that drops and comes back within the reconnect grace period
continues the same broadcast (a new *part*: sequence numbers go on, the
playlists get an EXT-X-DISCONTINUITY). When the grace period runs out — or at
shutdown — the gate announces ``BroadcastFinished`` and closes the broadcast.

The gate is the ``tidecast.live.LiveStatus`` of its node: ``live()`` maps each
stream to its live broadcast, paused ones (within the grace period) included.
Its grace timers are tracked tasks of its own supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tidecast.bus.base import Bus
from tidecast.db.playback import low_latency
from tidecast.db.recordings import Recordings
from tidecast.db.repo import Database
from tidecast.ingest.auth import Admission, IngestAuth, PublishRefused
from tidecast.live import LiveBroadcast
from tidecast.messages import BroadcastFinished
from tidecast.segmenter.service import BroadcastSegmenter, SegmenterService
from tidecast.supervise import Supervisor

log = logging.getLogger("tidecast.ingest")


__all__ = ["LiveSession", "PublishGate", "PublishRefused"]


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
    admission: Admission | None = None


@dataclass(slots=True)
class Paused:
    """A broadcast whose publisher left less than the grace period ago."""

    broadcast: str
    started_at: float
    next_sequence: int
    timer: asyncio.Task[None]
    video: str = ""
    audio: str = ""


class PublishGate:
    def __init__(
        self, db: Database, segmenter: SegmenterService, bus: Bus, reconnect_grace: float = 30.0,
        auth: IngestAuth | None = None,
    ) -> None:
        self.db = db
        self.auth = auth or IngestAuth(db)
        self.recordings = Recordings(db)
        self.segmenter = segmenter
        self.bus = bus
        self.reconnect_grace = reconnect_grace
        self.sessions: dict[str, LiveSession] = {}  # by stream: the publishers of this node
        self.paused: dict[str, Paused] = {}
        self.refused = 0
        self.finish_errors = 0
        self._claimed: set[str] = set()  # streams whose publish is being set up
        self.supervisor = Supervisor("ingest")

    def live(self) -> Mapping[str, LiveBroadcast]:
        """Live and paused broadcasts by stream (the ``LiveStatus`` of this node)."""
        return self.live_broadcasts()

    def live_broadcasts(self) -> dict[str, LiveBroadcast]:
        """Live and paused broadcasts by stream (the ``LiveStatus`` of this node)."""
        out = {
            name: LiveBroadcast(name, p.broadcast, p.started_at, p.video, p.audio, paused=True)
            for name, p in self.paused.items()
        }
        for name, s in self.sessions.items():
            out[name] = LiveBroadcast(name, s.broadcast, s.started_at, s.video, s.audio)
        return out

    async def open(self, key: str, remote: str, protocol: str, *, ip: str = "", app: str = "") -> LiveSession:
        """``key``: the publish name (a stream key, an ingest token, ``<stream>?token=..``);
        ``ip``: the publisher's address (default: ``remote`` less its port)."""
        ip = ip or remote.rpartition(":")[0] or remote
        try:
            admission = await self.auth.admit(key, ip, app, protocol)
        except PublishRefused:
            self.refused += 1
            raise
        info = admission.stream
        if info.name in self.sessions or info.name in self._claimed:
            self.refused += 1
            log.warning("refused publish to %r from %s: already live", info.name, remote)
            raise PublishRefused(
                "NetStream.Publish.BadName", f"stream {info.name!r} already has a publisher"
            )
        self._claimed.add(info.name)  # claimed before any await: no double publish
        try:
            try:
                await self.auth.approve(admission)  # the on_publish webhook
            except PublishRefused:
                self.refused += 1
                raise
            now = time.time()
            paused = self.paused.pop(info.name, None)
            if paused is not None:  # back within the grace period: same broadcast, next part
                await self.supervisor.stop(self.grace_task(info.name))
                broadcast, started_at, first_seq = paused.broadcast, paused.started_at, paused.next_sequence
            else:
                broadcast, started_at, first_seq = new_broadcast_id(now), now, 0
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
        low = low_latency(info.latency, info.encryption, self.segmenter.part_target > 0)
        sink = self.segmenter.open(info.name, broadcast, now, first_sequence=first_seq, part=part,
                                   low_latency=low)  # fmt: skip
        session = LiveSession(info.name, info.id, broadcast, started_at, remote, protocol, sink, part,
                              admission=admission)  # fmt: skip
        self.sessions[info.name] = session
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
            if self.sessions.get(session.stream) is session:
                del self.sessions[session.stream]
            log.info("%s: publisher gone (%s)", session.stream, reason)
            if session.admission is not None:
                self.auth.done(session.admission, reason)
        if reason == "server shutdown" or self.reconnect_grace <= 0:
            await self._finish(session.stream, session.broadcast, reason)
            return
        stream, broadcast = session.stream, session.broadcast
        timer = self.supervisor.spawn(  # a factory: cancelled before it starts, nothing leaks
            self.grace_task(stream), lambda: self._finish_later(stream, broadcast, reason),
            kind="ingest-grace",
        )
        self.paused[session.stream] = Paused(
            session.broadcast, session.started_at, session.sink.core.cut_count, timer,
            session.video, session.audio,
        )  # fmt: skip

    @staticmethod
    def grace_task(stream: str) -> str:
        return f"grace-{stream}"

    async def _finish_later(self, stream: str, broadcast: str, reason: str) -> None:
        await asyncio.sleep(self.reconnect_grace)
        p = self.paused.get(stream)
        if p is not None and p.broadcast == broadcast:
            del self.paused[stream]
            await self._finish(stream, broadcast, reason)

    async def _finish(self, stream: str, broadcast: str, reason: str) -> None:
        """The broadcast is over: recorded as ended, announced. A step that fails (its
        own retries gave up) is logged and counted; the other still runs."""
        now = time.time()
        try:
            await asyncio.to_thread(self.recordings.end, broadcast, datetime.fromtimestamp(now, UTC), reason)
        except Exception:
            self.finish_errors += 1
            log.exception("%s: could not record the end of broadcast %s", stream, broadcast)
        try:
            await self.bus.publish(f"broadcast.{stream}", BroadcastFinished(stream, broadcast, now, reason))
        except Exception:
            self.finish_errors += 1
            log.exception("%s: could not announce the end of broadcast %s", stream, broadcast)
        log.info("%s: broadcast %s finished (%s)", stream, broadcast, reason)

    async def aclose(self) -> None:
        for session in list(self.sessions.values()):
            await self.close(session, "server shutdown")
        for stream, p in list(self.paused.items()):
            await self.supervisor.stop(self.grace_task(stream))
            del self.paused[stream]
            await self._finish(stream, p.broadcast, "server shutdown")
        await self.supervisor.aclose()
        await self.auth.aclose()  # on_publish_done calls still in flight, bounded
