"""Recordings metadata: broadcasts, their recorded segments, clips, retention policies.

Synchronous (call through ``tidecast.db.transient.call`` from async code), one
short transaction per call. Segment rows are written before a segment is listed
in a live playlist, so after a crash every listed segment can be found again.

Every write a packager makes (``record_segment``, ``heal_segment``, ``end``,
``finish``) may carry a ``Fence``: checked in the write's own transaction, a
fence whose epoch is no longer the lease's makes the call write nothing and
raise ``StaleEpoch`` (see ``tidecast.db.leases``). Without one, a write is made
as is (``tidecast serve``, with its single packager).

Segment rows never get worse: the first row of a (rendition, sequence) stays,
except that ``heal_segment`` turns a gap into the real segment (marked
``healed``); a gap recorded where a real row exists changes nothing, so a late
or repeated gap cannot undo a heal. A broadcast's duration, size, renditions
and gap and healed counts are stored when it finishes (and again after a heal);
until then they are computed from its rows whenever it is read.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import case, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from tidecast.db.leases import Fence, begin_write, check_fence
from tidecast.db.models import Broadcast, Clip, RecordedSegment, Stream
from tidecast.db.repo import Database, StreamNotFound

RETENTION_MODES = ("forever", "days", "count")


class BroadcastNotFound(LookupError):
    pass


class ClipError(ValueError):
    pass


class BroadcastLive(Exception):
    """A broadcast still open (not ended) cannot be deleted."""

    def __init__(self, broadcast: str) -> None:
        super().__init__(f"broadcast {broadcast} is live: end it before deleting it")
        self.broadcast = broadcast


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
    healed: bool = False  # as read back; ``record_segment`` always writes False


# the columns a recorded row is written with (``healed`` is the repository's to set)
_ROW_FIELDS = tuple(f for f in SegmentRow.__dataclass_fields__ if f != "healed")


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
    gaps: int = 0  # segments listed as gaps (all renditions)
    healed: int = 0  # segments re-made after a gap (``Recordings.healed_segments`` lists them)


@dataclass(frozen=True, slots=True)
class Summary:
    """What a broadcast's rows add up to."""

    duration: float = 0.0  # of the top video rendition
    size: int = 0
    renditions: tuple[str, ...] = ()
    gaps: int = 0
    healed: int = 0


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


def _stored(b: Broadcast) -> Summary:
    return Summary(
        b.duration, b.size, tuple(r for r in b.renditions.split(",") if r), b.gaps, b.healed
    )


def _summarized(b: Broadcast) -> bool:
    """Whether the stored numbers are the broadcast's (set by ``finish``), not still to compute."""
    return b.ended_at is not None and bool(b.renditions)


def _binfo(b: Broadcast, stream: str, summary: Summary | None = None) -> BroadcastInfo:
    m = summary or _stored(b)
    return BroadcastInfo(
        b.id, stream, b.title, b.started_at, b.ended_at, b.end_reason, b.parts, m.duration,
        m.size, m.renditions, b.recorded, b.vod_ready, m.gaps, m.healed,
    )  # fmt: skip


def _row(r: RecordedSegment) -> SegmentRow:
    return SegmentRow(
        r.rendition, r.sequence, r.part, r.start, r.duration, r.init_key, r.segment_key, r.size,
        r.gap, r.codecs, r.width, r.height, r.frame_rate, r.program_date_time, r.healed,
    )  # fmt: skip


def _summaries(s: Session, broadcasts: list[str]) -> dict[str, Summary]:
    """The rows of several broadcasts added up, in one aggregate query."""
    if not broadcasts:
        return {}
    RS = RecordedSegment
    rows = s.execute(
        select(RS.broadcast_id, RS.rendition, func.max(RS.height), func.sum(RS.duration),
               func.sum(RS.size), func.sum(case((RS.gap.is_(True), 1), else_=0)),
               func.sum(case((RS.healed.is_(True), 1), else_=0)))
        .where(RS.broadcast_id.in_(broadcasts)).group_by(RS.broadcast_id, RS.rendition)
    ).all()  # fmt: skip
    per: dict[str, list[tuple[str, int, float, int, int, int]]] = {}
    for bid, rendition, height, duration, size, gaps, healed in rows:
        per.setdefault(bid, []).append(
            (
                rendition,
                int(height or 0),
                float(duration or 0),
                int(size or 0),
                int(gaps),
                int(healed),
            )
        )
    out: dict[str, Summary] = {}
    for bid, rends in per.items():
        rends.sort()
        video = [r for r in rends if r[0] != "audio"]
        main = max(video, key=lambda r: r[1]) if video else None  # the first of the tallest
        out[bid] = Summary(
            duration=round(main[2], 3) if main else 0.0, size=sum(r[3] for r in rends),
            renditions=tuple(r[0] for r in rends), gaps=sum(r[4] for r in rends),
            healed=sum(r[5] for r in rends),
        )  # fmt: skip
    return out


def _store_summary(b: Broadcast, m: Summary) -> None:
    b.duration, b.size, b.renditions = m.duration, m.size, ",".join(m.renditions)
    b.gaps, b.healed = m.gaps, m.healed


class Recordings:
    def __init__(self, db: Database) -> None:
        self.db = db
        dialect = db.engine.dialect.name
        self._pg = dialect == "postgresql"
        if dialect not in ("postgresql", "sqlite"):  # needs ON CONFLICT; add the dialect here
            raise NotImplementedError(f"recordings are not implemented for {dialect}")

    def _insert(self) -> postgresql.Insert | sqlite.Insert:
        return (postgresql.insert if self._pg else sqlite.insert)(RecordedSegment)

    def _write(self, s: Session, fence: Fence | None) -> None:
        """Open a write transaction; with a fence, refuse (``StaleEpoch``) unless it is current."""
        begin_write(s)
        if fence is not None:
            check_fence(s, fence)

    def _broadcast(self, s: Session, broadcast: str, *, lock: bool = False) -> Broadcast:
        q = select(Broadcast).where(Broadcast.id == broadcast)
        if lock and self._pg:
            q = q.with_for_update()
        b = s.scalar(q)
        if b is None:
            raise BroadcastNotFound(broadcast)
        return b

    # -- broadcasts ------------------------------------------------------------
    def start(
        self, stream_id: int, broadcast: str, started_at: datetime, title: str, recorded: bool
    ) -> None:
        with self.db.session() as s:
            stream = s.get(Stream, stream_id)
            seed = secrets.token_hex(16) if stream is not None and stream.encryption == "aes-128" else ""
            s.add(Broadcast(id=broadcast, stream_id=stream_id, started_at=started_at, title=title,
                            recorded=recorded, key_seed=seed))  # fmt: skip
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

    def end(
        self, broadcast: str, ended_at: datetime, reason: str, fence: Fence | None = None
    ) -> None:
        """Mark a broadcast ended (once; a second end changes nothing). Unknown: nothing."""
        with self.db.session() as s:
            self._write(s, fence)
            b = s.get(Broadcast, broadcast)
            if b is not None and b.ended_at is None:
                b.ended_at, b.end_reason = ended_at, reason
            s.commit()

    def record_segment(self, broadcast: str, seg: SegmentRow, fence: Fence | None = None) -> None:
        """Record a listed segment (or gap). A row already there for its (rendition,
        sequence) stays as it is: a duplicate delivery, or a gap after the real one."""
        RS = RecordedSegment
        with self.db.session() as s:
            self._write(s, fence)
            self._broadcast(s, broadcast)
            stmt = (
                self._insert()
                .values(
                    broadcast_id=broadcast,
                    healed=False,
                    **{f: getattr(seg, f) for f in _ROW_FIELDS},
                )
                .on_conflict_do_nothing(index_elements=[RS.broadcast_id, RS.rendition, RS.sequence])
            )
            s.execute(stmt)
            s.commit()

    def heal_segment(self, broadcast: str, seg: SegmentRow, fence: Fence | None = None) -> bool:
        """The real segment for one first recorded as a gap, or not recorded at all.

        The row becomes ``seg`` (keys, size, codecs, dimensions...) with gap false
        and healed true; True if it changed. A real row already there is kept
        (False): healing twice, or healing what never was a gap, changes nothing.
        An ended broadcast's stored numbers are brought up to date with it.
        """
        if seg.gap:
            raise ValueError(
                f"{broadcast}: healing {seg.rendition}/{seg.sequence} needs a real segment, not a gap"
            )
        RS = RecordedSegment
        with self.db.session() as s:
            self._write(s, fence)
            b = self._broadcast(s, broadcast, lock=True)  # concurrent heals count one after another
            values = {f: getattr(seg, f) for f in _ROW_FIELDS} | {"gap": False, "healed": True}
            ins = self._insert().values(broadcast_id=broadcast, **values)
            stmt = ins.on_conflict_do_update(
                index_elements=[RS.broadcast_id, RS.rendition, RS.sequence],
                set_={
                    f: getattr(ins.excluded, f)
                    for f in values
                    if f not in ("rendition", "sequence")
                },
                where=RS.gap.is_(True),
            ).returning(RS.id)
            changed = s.execute(stmt).first() is not None
            if changed and _summarized(b):
                _store_summary(b, _summaries(s, [broadcast]).get(broadcast, Summary()))
            s.commit()
            return changed

    def segments(self, broadcast: str) -> list[SegmentRow]:
        with self.db.session() as s:
            rows = s.scalars(
                select(RecordedSegment).where(RecordedSegment.broadcast_id == broadcast)
                .order_by(RecordedSegment.rendition, RecordedSegment.sequence)
            )  # fmt: skip
            return [_row(r) for r in rows]

    def finish(
        self, broadcast: str, ended_at: datetime, reason: str, fence: Fence | None = None
    ) -> BroadcastInfo:
        """Close a broadcast and store its duration, size, renditions and counts from its rows."""
        with self.db.session() as s:
            self._write(s, fence)
            b = self._broadcast(s, broadcast, lock=True)
            if b.ended_at is None:
                b.ended_at = ended_at
                b.end_reason = reason
            m = _summaries(s, [broadcast]).get(broadcast, Summary())
            _store_summary(b, m)
            b.vod_ready = bool(m.renditions) and b.recorded
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

    def recorded_state(self, broadcast: str) -> dict[tuple[str, int], bool]:
        """Every recorded (rendition, sequence) of a broadcast: True where it is a gap."""
        with self.db.session() as s:
            rows = s.execute(
                select(RecordedSegment.rendition, RecordedSegment.sequence, RecordedSegment.gap)
                .where(RecordedSegment.broadcast_id == broadcast)
            )  # fmt: skip
            return {(r, q): bool(g) for r, q, g in rows}

    def recorded_keys(self, broadcast: str) -> set[tuple[str, int]]:
        """Every recorded (rendition, sequence), gaps included (``recorded_state`` says which)."""
        return set(self.recorded_state(broadcast))

    def healed_segments(self, broadcast: str) -> list[tuple[str, int]]:
        """The segments of a broadcast that were re-made after a gap: (rendition, sequence)."""
        with self.db.session() as s:
            rows = s.execute(
                select(RecordedSegment.rendition, RecordedSegment.sequence)
                .where(RecordedSegment.broadcast_id == broadcast, RecordedSegment.healed.is_(True))
                .order_by(RecordedSegment.rendition, RecordedSegment.sequence)
            )  # fmt: skip
            return [(r, q) for r, q in rows]

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
        """A broadcast; one not finished yet reports what has been recorded so far."""
        with self.db.session() as s:
            b = s.get(Broadcast, broadcast)
            if b is None:
                raise BroadcastNotFound(broadcast)
            live = None if _summarized(b) else _summaries(s, [b.id]).get(b.id, Summary())
            return _binfo(b, b.stream.name, live)

    def broadcasts(self, stream: str | None = None, vod_only: bool = False) -> list[BroadcastInfo]:
        """Newest first; those not finished yet report what has been recorded so far."""
        with self.db.session() as s:
            q = select(Broadcast, Stream.name).join(Stream).order_by(Broadcast.started_at.desc())
            if stream is not None:
                q = q.where(Stream.name == stream)
            if vod_only:
                q = q.where(Broadcast.vod_ready.is_(True))
            found = [(b, name) for b, name in s.execute(q)]
            live = _summaries(s, [b.id for b, _ in found if not _summarized(b)])
            return [_binfo(b, name, None if _summarized(b) else live.get(b.id, Summary()))
                    for b, name in found]  # fmt: skip

    def delete(self, broadcast: str) -> None:
        """Delete an ended broadcast's rows (an unknown one: nothing). Refuses a live one
        (``BroadcastLive``), decided in the same transaction as the delete."""
        with self.db.session() as s:
            begin_write(s)
            q = select(Broadcast.ended_at).where(Broadcast.id == broadcast)
            row = s.execute(q.with_for_update() if self._pg else q).first()
            if row is None:
                return
            if row[0] is None:
                raise BroadcastLive(broadcast)
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
