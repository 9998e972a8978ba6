"""Recordings metadata: broadcasts, their recorded segments, clips, retention policies.

Synchronous (call through ``asyncio.to_thread`` from async code), one short
transaction per call. Segment rows are written before a segment is listed in a
live playlist, so after a crash every listed segment can be found again.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from tidecast.db.models import Broadcast, Clip, RecordedSegment, Stream
from tidecast.db.repo import Database, StreamNotFound

RETENTION_MODES = ("forever", "days", "count")


class BroadcastNotFound(LookupError):
    pass


class ClipError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class SegmentRow:
    rendition: str
    sequence: int
    part: int
    start: float
    duration: float
    init_key: str
    segment_key: str
    size: int
    gap: bool
    codecs: str
    width: int
    height: int
    frame_rate: float
    program_date_time: float


@dataclass(frozen=True, slots=True)
class BroadcastInfo:
    id: str
    stream: str
    title: str
    started_at: datetime
    ended_at: datetime | None
    end_reason: str
    parts: int
    duration: float
    size: int
    renditions: tuple[str, ...]
    recorded: bool
    vod_ready: bool


@dataclass(frozen=True, slots=True)
class ClipInfo:
    id: str
    broadcast: str
    stream: str
    title: str
    first_sequence: int
    last_sequence: int
    duration: float
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Retention:
    recording: bool
    mode: str
    value: int


def _binfo(b: Broadcast, stream: str) -> BroadcastInfo:
    return BroadcastInfo(
        b.id, stream, b.title, b.started_at, b.ended_at, b.end_reason, b.parts, b.duration,
        b.size, tuple(r for r in b.renditions.split(",") if r), b.recorded, b.vod_ready,
    )  # fmt: skip


def _row(r: RecordedSegment) -> SegmentRow:
    return SegmentRow(
        r.rendition, r.sequence, r.part, r.start, r.duration, r.init_key, r.segment_key, r.size,
        r.gap, r.codecs, r.width, r.height, r.frame_rate, r.program_date_time,
    )  # fmt: skip


class Recordings:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- broadcasts ------------------------------------------------------------
    def start(
        self, stream_id: int, broadcast: str, started_at: datetime, title: str, recorded: bool
    ) -> None:
        with self.db.session() as s:
            s.add(Broadcast(id=broadcast, stream_id=stream_id, started_at=started_at, title=title,
                            recorded=recorded))  # fmt: skip
            s.commit()

    def resume(self, broadcast: str) -> int:
        """A publisher came back within the grace period: one more part."""
        with self.db.session() as s:
            b = s.get(Broadcast, broadcast)
            if b is None:
                raise BroadcastNotFound(broadcast)
            b.parts += 1
            s.commit()
            return b.parts - 1

    def end(self, broadcast: str, ended_at: datetime, reason: str) -> None:
        with self.db.session() as s:
            b = s.get(Broadcast, broadcast)
            if b is not None and b.ended_at is None:
                b.ended_at, b.end_reason = ended_at, reason
                s.commit()

    def record_segment(self, broadcast: str, seg: SegmentRow) -> None:
        with self.db.session() as s:
            s.add(RecordedSegment(broadcast_id=broadcast, **{
                f: getattr(seg, f) for f in SegmentRow.__dataclass_fields__
            }))  # fmt: skip
            try:
                s.commit()
            except IntegrityError:
                s.rollback()  # the same segment delivered twice: already recorded

    def segments(self, broadcast: str) -> list[SegmentRow]:
        with self.db.session() as s:
            rows = s.scalars(
                select(RecordedSegment).where(RecordedSegment.broadcast_id == broadcast)
                .order_by(RecordedSegment.rendition, RecordedSegment.sequence)
            )  # fmt: skip
            return [_row(r) for r in rows]

    def finish(self, broadcast: str, ended_at: datetime, reason: str) -> BroadcastInfo:
        """Close a broadcast and compute its duration, size and renditions from its segments."""
        segs = self.segments(broadcast)
        with self.db.session() as s:
            b = s.get(Broadcast, broadcast)
            if b is None:
                raise BroadcastNotFound(broadcast)
            if b.ended_at is None:
                b.ended_at = ended_at
                b.end_reason = reason
            renditions = sorted({r.rendition for r in segs})
            video = [r for r in renditions if r != "audio"]
            main = (
                max(video, key=lambda n: max(x.height for x in segs if x.rendition == n))
                if video
                else None
            )
            b.duration = (
                round(sum(x.duration for x in segs if x.rendition == main), 3) if main else 0.0
            )
            b.size = sum(x.size for x in segs)
            b.renditions = ",".join(renditions)
            b.vod_ready = bool(segs) and b.recorded
            s.commit()
            return _binfo(b, b.stream.name)

    def current_broadcast(self, stream: str) -> tuple[str, float] | None:
        """The stream's latest broadcast (live, paused or just ended): (id, start epoch s)."""
        with self.db.session() as s:
            row = s.execute(
                select(Broadcast.id, Broadcast.started_at).join(Stream).where(Stream.name == stream)
                .order_by(Broadcast.started_at.desc()).limit(1)
            ).first()  # fmt: skip
            return (row[0], row[1].timestamp()) if row else None

    def recorded_keys(self, broadcast: str) -> set[tuple[str, int]]:
        with self.db.session() as s:
            rows = s.execute(
                select(RecordedSegment.rendition, RecordedSegment.sequence)
                .where(RecordedSegment.broadcast_id == broadcast)
            )  # fmt: skip
            return {(r, q) for r, q in rows}

    def needs_vod(self, broadcast: str) -> bool:
        """Ended and recorded, but its VOD was never written (its packager died)."""
        with self.db.session() as s:
            b = s.get(Broadcast, broadcast)
            return b is not None and b.ended_at is not None and b.recorded and not b.vod_ready

    def last_activity(self, broadcast: str) -> float:
        """When anything last happened to a broadcast: its last segment or its start."""
        last = self.last_segment_time(broadcast)
        if last is not None:
            return last
        with self.db.session() as s:
            b = s.get(Broadcast, broadcast)
            return b.started_at.timestamp() if b is not None else 0.0

    def live_broadcasts(self) -> dict[str, tuple[str, float]]:
        """Open broadcasts by stream name: (id, start epoch s). Seen from any node."""
        with self.db.session() as s:
            rows = s.execute(
                select(Stream.name, Broadcast.id, Broadcast.started_at).join(Stream)
                .where(Broadcast.ended_at.is_(None)).order_by(Broadcast.started_at)
            )  # fmt: skip
            return {name: (bid, started.timestamp()) for name, bid, started in rows}

    def open_broadcasts(self) -> list[str]:
        with self.db.session() as s:
            return list(s.scalars(select(Broadcast.id).where(Broadcast.ended_at.is_(None))))

    def last_segment_time(self, broadcast: str) -> float | None:
        with self.db.session() as s:
            return s.scalar(
                select(func.max(RecordedSegment.program_date_time + RecordedSegment.duration))
                .where(RecordedSegment.broadcast_id == broadcast)
            )  # fmt: skip

    def get(self, broadcast: str) -> BroadcastInfo:
        with self.db.session() as s:
            b = s.get(Broadcast, broadcast)
            if b is None:
                raise BroadcastNotFound(broadcast)
            return _binfo(b, b.stream.name)

    def broadcasts(self, stream: str | None = None, vod_only: bool = False) -> list[BroadcastInfo]:
        with self.db.session() as s:
            q = select(Broadcast, Stream.name).join(Stream).order_by(Broadcast.started_at.desc())
            if stream is not None:
                q = q.where(Stream.name == stream)
            if vod_only:
                q = q.where(Broadcast.vod_ready.is_(True))
            return [_binfo(b, name) for b, name in s.execute(q)]

    def delete(self, broadcast: str) -> None:
        with self.db.session() as s:
            s.execute(delete(RecordedSegment).where(RecordedSegment.broadcast_id == broadcast))
            s.execute(delete(Clip).where(Clip.broadcast_id == broadcast))
            s.execute(delete(Broadcast).where(Broadcast.id == broadcast))
            s.commit()

    # -- clips -----------------------------------------------------------------
    def create_clip(self, broadcast: str, start: float, end: float, title: str) -> ClipInfo:
        """A clip covers the whole segments that overlap [start, end) (seconds from the start)."""
        if not 0 <= start < end:
            raise ClipError("a clip needs 0 <= start < end")
        info = self.get(broadcast)
        segs = [
            r
            for r in self.segments(broadcast)
            if r.rendition == _main_rendition(self.segments(broadcast))
        ]
        if not segs:
            raise ClipError("the broadcast has no recorded segments")
        t0 = segs[0].program_date_time
        inside = [
            r
            for r in segs
            if r.program_date_time - t0 < end and r.program_date_time - t0 + r.duration > start
        ]
        if not inside:
            raise ClipError(f"nothing recorded between {start:g} s and {end:g} s")
        clip = Clip(
            id="c" + secrets.token_hex(5), broadcast_id=broadcast, title=title or f"{info.title} clip",
            first_sequence=inside[0].sequence, last_sequence=inside[-1].sequence,
            duration=round(sum(r.duration for r in inside), 3), created_at=datetime.now(UTC),
        )  # fmt: skip
        with self.db.session() as s:
            s.add(clip)
            s.commit()
            return ClipInfo(clip.id, broadcast, info.stream, clip.title, clip.first_sequence,
                            clip.last_sequence, clip.duration, clip.created_at)  # fmt: skip

    def clips(self, broadcast: str | None = None) -> list[ClipInfo]:
        with self.db.session() as s:
            q = (
                select(Clip, Stream.name)
                .join(Broadcast, Clip.broadcast_id == Broadcast.id)
                .join(Stream)
            )
            if broadcast:
                q = q.where(Clip.broadcast_id == broadcast)
            return [ClipInfo(c.id, c.broadcast_id, name, c.title, c.first_sequence, c.last_sequence,
                             c.duration, c.created_at)
                    for c, name in s.execute(q.order_by(Clip.created_at.desc()))]  # fmt: skip

    def get_clip(self, clip_id: str) -> ClipInfo:
        for c in self.clips():
            if c.id == clip_id:
                return c
        raise BroadcastNotFound(clip_id)

    # -- retention ---------------------------------------------------------------
    def retention(self, stream: str) -> Retention:
        with self.db.session() as s:
            row = s.scalar(select(Stream).where(Stream.name == stream))
            if row is None:
                raise StreamNotFound(stream)
            return Retention(row.recording, row.retention_mode, row.retention_value)

    def set_retention(self, stream: str, r: Retention) -> Retention:
        if r.mode not in RETENTION_MODES:
            raise ValueError(f"retention mode must be one of {', '.join(RETENTION_MODES)}")
        if r.mode != "forever" and r.value < 1:
            raise ValueError(f"retention {r.mode} needs a value of at least 1")
        with self.db.session() as s:
            row = s.scalar(select(Stream).where(Stream.name == stream))
            if row is None:
                raise StreamNotFound(stream)
            row.recording, row.retention_mode, row.retention_value = r.recording, r.mode, r.value
            s.commit()
        return r

    def expired(self, now: datetime) -> list[BroadcastInfo]:
        """Ended broadcasts that their stream's policy says to delete."""
        out: list[BroadcastInfo] = []
        with self.db.session() as s:
            streams = list(s.scalars(select(Stream)))
            policies = {st.name: (st.retention_mode, st.retention_value) for st in streams}
        for name, (mode, value) in policies.items():
            ended = [b for b in self.broadcasts(name) if b.ended_at is not None]
            if mode == "days":
                out += [b for b in ended if b.ended_at and b.ended_at < now - timedelta(days=value)]
            elif mode == "count":
                out += ended[value:]  # newest first: keep the first N
        return out


def _main_rendition(segs: list[SegmentRow]) -> str:
    video = {r.rendition: r.height for r in segs if r.rendition != "audio"}
    return max(video, key=lambda n: video[n]) if video else "audio"
