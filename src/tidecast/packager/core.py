"""The packager's decisions, sans-I/O: bus messages and the time in, actions out.

``PackagerCore.handle(msg, now)`` and ``tick(now)`` return the actions the shell
(``packager.service``) carries out, in order: ``Record`` a segment in the
database, ``PutPlaylist`` / ``PutMaster`` a playlist, ``FinishRecording`` /
``RewriteVod`` a recording, ``Listed`` for latency hooks. ``now`` is a monotonic
clock; nothing here sleeps, reads a clock or touches a store.

Rules:
- Segments are listed strictly in sequence order per rendition; one that arrives
  early waits in ``pending`` for its predecessors.
- Every wait has a deadline. A rendition blocked on a missing segment (a later one
  is already here) lists it as EXT-X-GAP ``gap_after`` seconds after the first
  later one arrived; after the publisher left (``BroadcastEnded`` says how many
  segments there are), the missing tail becomes gaps ``end_gap_after`` seconds
  after that. So a playlist never stops and a broadcast always ends (ENDLIST and
  its recording), gaps included. ``max_pending`` bounds what may wait.
- A real segment for a sequence already listed as a gap (a late arrival, or a
  heal job's output) *heals* it: the recording gets the real segment, the live
  playlist replaces the gap entry while the window still lists it, and a VOD
  already written is written again.
- A segment is recorded before it is listed (``Record`` comes before the
  ``PutPlaylist`` that names it).
- Media sequence numbers are shared by all renditions: ``base + sequence`` with
  ``base`` fixed when a broadcast starts, so segment N of every rendition has the
  same number. A publisher back within the reconnect grace continues the same
  playlists after an EXT-X-DISCONTINUITY.

Low latency (``ll_hls``, RFC 8216bis): ``PartReady`` messages list the parts of
the segment in progress at once, in index order (one that arrives early waits for
the missing one; past ``gap_after`` the missing part is listed GAP=YES). When the
segment's ``SegmentReady`` comes it is listed complete, with exactly the parts
listed for it if they cover it (contiguous, up to the ``final`` one, durations
adding up), otherwise whole, without parts (a Parent Segment and its parts hold
the same media, 8216bis 3.2). A part of a segment already listed is ignored. Every
media playlist of a stream advertises the same PART-TARGET and server control
(8216bis 6.2.4), reports the other renditions, and hints the next part.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from tidecast import keys
from tidecast.messages import (
    BroadcastEnded,
    BroadcastFinished,
    BroadcastStarted,
    Message,
    PartReady,
    SegmentReady,
)
from tidecast.packager.hls import (
    AudioRendition,
    MediaPlaylist,
    PlaylistPart,
    PlaylistSegment,
    Variant,
    ceil_ms,
    render_multivariant,
)

log = logging.getLogger("tidecast.packager")

KEEP_BROADCASTS = 4  # timelines kept per stream: the current one and a few before it
PART_LIMIT = 1.5  # a part longer than this many part targets is not listed (its segment is, whole)
PART_SUM_TOLERANCE = 0.05  # s: parts that add up to their segment within this (a frame at 20 fps)


# ------------------------------------------------------------------ actions
@dataclass(frozen=True, slots=True)
class Record:
    """Persist one segment of a recording (a heal replaces its gap row)."""

    seg: SegmentReady
    program_date_time: float
    heal: bool = False


@dataclass(frozen=True, slots=True)
class PutPlaylist:
    stream: str
    rendition: str
    key: str
    text: str
    next_msn: int
    ended: bool
    last_part: int = -1  # the last part listed after the last complete segment (-1: none)


@dataclass(frozen=True, slots=True)
class PutMaster:
    stream: str
    key: str
    text: str


@dataclass(frozen=True, slots=True)
class FinishRecording:
    stream: str
    broadcast: str


@dataclass(frozen=True, slots=True)
class RewriteVod:
    """A recording already written as VOD healed: write its playlists again."""

    stream: str
    broadcast: str


@dataclass(frozen=True, slots=True)
class Listed:
    """A segment went into its live playlist (for latency hooks)."""

    seg: SegmentReady


Action = Record | PutPlaylist | PutMaster | FinishRecording | RewriteVod | Listed


# ------------------------------------------------------------------ state
@dataclass(slots=True)
class RenditionState:
    name: str
    playlist: MediaPlaylist
    next_seq: dict[str, int] = field(default_factory=dict)  # broadcast -> next sequence to list
    pending: dict[tuple[str, int], tuple[SegmentReady, float]] = field(default_factory=dict)
    gaps: set[tuple[str, int]] = field(default_factory=set)  # listed (or recorded) as gaps
    peak_bps: int = 0
    total_bits: float = 0.0
    total_seconds: float = 0.0
    codecs: str = ""
    width: int = 0
    height: int = 0
    frame_rate: float = 0.0
    last_init: str = ""
    discontinuity_next: bool = False
    # LL: the segment whose parts are listed (in progress), those parts, parts not yet
    # listable (out of order, or of a later segment), segments listed whole
    parts_open: tuple[str, int] | None = None
    parts_listed: list[PartReady] = field(default_factory=list)
    parts_waiting: dict[tuple[str, int, int], tuple[PartReady, float]] = field(default_factory=dict)
    parts_whole: set[tuple[str, int]] = field(default_factory=set)
    parts_seen: set[str] = field(default_factory=set)  # broadcasts it had parts in

    def variant(self) -> Variant:
        avg = int(self.total_bits / self.total_seconds) if self.total_seconds else self.peak_bps
        return Variant(
            uri=f"{self.name}.m3u8", bandwidth=max(self.peak_bps, avg), average_bandwidth=avg,
            codecs=self.codecs, width=self.width, height=self.height, frame_rate=self.frame_rate,
        )  # fmt: skip

    def blocked_since(self, broadcast: str) -> float | None:
        """When the first segment after the missing one arrived (None: not blocked)."""
        nxt = self.next_seq.get(broadcast, 0)
        times = [t for (b, s), (_, t) in self.pending.items() if b == broadcast and s > nxt]
        times += [t for (b, s, _), (_, t) in self.parts_waiting.items() if b == broadcast and s > nxt]
        return min(times) if times else None

    def listed_parts(self, broadcast: str) -> int:
        """How many parts of the segment in progress are listed."""
        return len(self.parts_listed) if self.parts_open == (broadcast, self.next_seq.get(broadcast, 0)) else 0

    def parts_blocked_since(self, broadcast: str) -> float | None:
        """When the first part after a missing one of the segment in progress arrived."""
        nxt = self.next_seq.get(broadcast, 0)
        have = self.listed_parts(broadcast)
        times = [t for (b, s, i), (_, t) in self.parts_waiting.items() if (b, s) == (broadcast, nxt) and i > have]
        return min(times) if times else None


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """What any message of one sequence number said about its media (for gaps)."""

    start: float
    duration: float
    first_frame_arrival: float
    part: int
    renditions: tuple[str, ...]


@dataclass(slots=True)
class BroadcastTimeline:
    msn_base: int
    anchors: dict[int, float] = field(default_factory=dict)  # part -> wall clock of media time 0
    segments: int | None = None  # known once the publisher session ended
    ended_at: float | None = None  # monotonic: when it was learned
    info: dict[int, SegmentInfo] = field(default_factory=dict)  # sequence -> media facts
    vod_written: bool = False


@dataclass(slots=True)
class StreamState:
    name: str
    renditions: dict[str, RenditionState] = field(default_factory=dict)
    broadcasts: dict[str, BroadcastTimeline] = field(default_factory=dict)
    current: str | None = None
    next_msn: int = 0
    ended: bool = False
    master_text: str = ""
    expected: set[str] = field(default_factory=set)  # renditions the current broadcast makes
    part_target: float = 0.0  # LL: the PART-TARGET all its playlists advertise (0: no parts yet)
    end_pending: bool = False  # the grace is over; end once every rendition has caught up
    finishing: str | None = None  # the broadcast being finished


@dataclass(slots=True)
class CoreStats:
    listed: int = 0
    gaps_listed: int = 0  # gaps the deadlines made (not the ones announced as gaps)
    healed: int = 0
    late: int = 0  # real segments that arrived after their gap was listed
    overflow: int = 0  # segments forced out of a full pending set
    parts_listed: int = 0
    parts_late: int = 0  # parts of a segment already listed (or of a broadcast not current)
    parts_duplicate: int = 0
    parts_gaps: int = 0  # missing parts listed GAP=YES at their deadline
    segments_whole: int = 0  # segments whose parts could not be listed (or kept): listed whole


class PackagerCore:
    def __init__(
        self, *, window: int, target_duration: float, include_source: bool = True,
        gap_after: float | None = None, end_gap_after: float | None = None, max_pending: int = 1000,
        ll_hls: bool = False, part_target: float = 1 / 3,
    ) -> None:  # fmt: skip
        if ll_hls and not 0 < part_target <= target_duration / 2:
            raise ValueError(f"part target {part_target} s must be positive and at most half the "
                             f"segment target {target_duration} s")  # fmt: skip
        self.ll_hls = ll_hls
        self.part_target = part_target
        self.window = window
        self.target_duration = target_duration
        self.include_source = include_source
        self.gap_after = 3 * target_duration if gap_after is None else gap_after
        self.end_gap_after = (
            self.gap_after + 5 * target_duration if end_gap_after is None else end_gap_after
        )
        self.max_pending = max_pending
        self.streams: dict[str, StreamState] = {}
        self.stats = CoreStats()

    # -------------------------------------------------------------- entry points
    def handle(self, msg: Message, now: float) -> list[Action]:
        out: list[Action] = []
        if isinstance(msg, SegmentReady):
            self._on_segment(msg, now, out)
        elif isinstance(msg, PartReady):
            self._on_part(msg, now, out)
        elif isinstance(msg, BroadcastStarted):
            self._on_started(msg)
        elif isinstance(msg, BroadcastEnded):
            self._on_ended(msg, now)
        elif isinstance(msg, BroadcastFinished):
            self._on_finished(msg, out)
        return out

    def tick(self, now: float, stream: str | None = None) -> list[Action]:
        """Apply the deadlines (of one stream, or all): missing segments past theirs
        become gaps."""
        out: list[Action] = []
        for st in self._select(stream):
            self._apply_deadlines(st, now, out)
        return out

    def _select(self, stream: str | None) -> list[StreamState]:
        if stream is None:
            return list(self.streams.values())
        st = self.streams.get(stream)
        return [st] if st is not None else []

    def next_deadline(self, stream: str | None = None) -> float | None:
        """The earliest time ``tick`` can change anything (None: no wait is running)."""
        best: float | None = None
        for st in self._select(stream):
            b = st.current
            if b is None:
                continue
            tl = st.broadcasts[b]
            for r in st.renditions.values():
                since = r.blocked_since(b)
                if since is not None:
                    best = _min(best, since + self.gap_after)
                since = r.parts_blocked_since(b)
                if since is not None:
                    best = _min(best, since + self.gap_after)
            if tl.segments is not None and tl.ended_at is not None and not self._caught_up(st):
                best = _min(best, tl.ended_at + self.end_gap_after)
        return best

    def end_all(self, stream: str | None = None) -> list[Action]:
        """Shutdown: streams waiting to end end now, with what they have."""
        out: list[Action] = []
        for st in self._select(stream):
            if st.end_pending:
                self._end_stream(st, out, force=True)
        return out

    def forget(self, stream: str) -> bool:
        return self.streams.pop(stream, None) is not None

    def render_all(self, stream: str) -> list[Action]:
        """Every playlist of ``stream`` as it stands (after a takeover's replay)."""
        st = self.streams.get(stream)
        if st is None:
            return []
        out: list[Action] = [self._put(st, r) for r in st.renditions.values()]
        master = self._master(st)
        if master is not None:
            st.master_text = master
            out.append(PutMaster(st.name, keys.live_master(st.name), master))
        return out

    # -------------------------------------------------------------- takeover seeding
    def stream(self, name: str) -> StreamState:
        st = self.streams.get(name)
        if st is None:
            st = self.streams[name] = StreamState(name)
        return st

    def seed_rendition(
        self, stream: str, rendition: str, stored: MediaPlaylist, current: str | None
    ) -> int | None:
        """Continue from a stored playlist (a takeover): its earlier broadcasts' segments
        stay in the window; returns the msn base of broadcast ``current`` if it is listed."""
        st = self.stream(stream)
        r = st.renditions[rendition] = RenditionState(rendition, self._playlist(st))
        r.playlist.discontinuity_sequence = stored.discontinuity_sequence
        keep_parts = self.ll_hls and stored.part_target is not None
        if keep_parts:  # the parts it lists stay as they are: the part target covers them
            assert stored.part_target is not None
            st.part_target = max(st.part_target, stored.part_target)
            r.playlist.part_target = st.part_target
        base = None
        for seg in stored.segments:
            if current is not None and seg.uri.startswith(f"{current}/"):
                if base is None:
                    base = seg.msn - int(posixpath.basename(seg.uri).split(".")[0])
                continue
            r.playlist.append(seg if keep_parts else replace(seg, parts=()))
            r.last_init = seg.init_uri
        return base  # the segment in progress, if any, comes again from the replay

    # -------------------------------------------------------------- broadcasts
    def _on_started(self, msg: BroadcastStarted) -> None:
        st = self.stream(msg.stream)
        had_segments = any(r.playlist.segments for r in st.renditions.values())
        tl = st.broadcasts.get(msg.broadcast)
        if tl is not None:  # a resumed part of a known broadcast (or a repeated message)
            if msg.part and tl.segments is not None:
                tl.segments = None
                tl.ended_at = None
                for r in st.renditions.values():
                    r.discontinuity_next = bool(r.playlist.segments)
                log.info("%s: broadcast %s resumed (part %d)", msg.stream, msg.broadcast, msg.part)
            return
        st.end_pending = False
        st.broadcasts[msg.broadcast] = BroadcastTimeline(msn_base=st.next_msn)
        st.current = msg.broadcast
        st.ended = False
        st.expected = set()
        for r in st.renditions.values():
            r.discontinuity_next = had_segments
            # a segment of the last broadcast that never completed: its msn is the new one's
            r.playlist.drop_in_progress()
            r.parts_open, r.parts_listed = None, []
            r.parts_waiting.clear()
            r.parts_whole.clear()
        while len(st.broadcasts) > KEEP_BROADCASTS:  # the newest few (late heals find theirs)
            del st.broadcasts[next(iter(st.broadcasts))]
        log.info("%s: broadcast %s started", msg.stream, msg.broadcast)

    def _on_ended(self, msg: BroadcastEnded, now: float) -> None:
        """The publisher left; the playlists wait (the gate decides when it is over)."""
        tl = self.stream(msg.stream).broadcasts.get(msg.broadcast)
        if tl is not None:
            tl.segments = msg.segments
            tl.ended_at = now

    def _on_finished(self, msg: BroadcastFinished, out: list[Action]) -> None:
        st = self.stream(msg.stream)
        if st.current == msg.broadcast and not st.ended:
            st.finishing = msg.broadcast
            self._end_stream(st, out)

    def _caught_up(self, st: StreamState) -> bool:
        """Every rendition of the current broadcast has listed its last segment."""
        tl = st.broadcasts.get(st.current or "")
        if tl is None or tl.segments is None:
            return True
        for name in st.expected or st.renditions:
            r = st.renditions.get(name)
            if r is None or r.next_seq.get(st.current or "", 0) < tl.segments:
                return False
        return True

    def _end_stream(self, st: StreamState, out: list[Action], force: bool = False) -> None:
        if not force and not self._caught_up(st):
            st.end_pending = True  # renditions still being transcoded: end after them
            return
        st.end_pending = False
        st.ended = True
        for r in st.renditions.values():
            r.playlist.end()
            out.append(self._put(st, r))
        log.info("%s: playlists ended", st.name)
        if st.finishing:
            tl = st.broadcasts.get(st.finishing)
            if tl is not None:
                tl.vod_written = True
            out.append(FinishRecording(st.name, st.finishing))
            st.finishing = None

    # -------------------------------------------------------------- segments
    def _on_segment(self, msg: SegmentReady, now: float, out: list[Action]) -> None:
        _check(msg)
        st = self.stream(msg.stream)
        timeline = st.broadcasts.get(msg.broadcast)
        if timeline is None and st.current is not None and (msg.heal or msg.broadcast < st.current):
            # a broadcast this packager no longer keeps (ids sort by start time): only its
            # recording can still change; the database keeps a real row over a gap
            if not msg.gap and (msg.rendition != "source" or self._lists_source(msg)):
                out.append(Record(msg, msg.first_frame_arrival, heal=True))
                out.append(RewriteVod(msg.stream, msg.broadcast))
            return
        if timeline is None:  # segment before its BroadcastStarted: treat as started
            self._on_started(BroadcastStarted(msg.stream, msg.broadcast, msg.first_frame_arrival))
            timeline = st.broadcasts[msg.broadcast]
        if msg.sequence not in timeline.info and not msg.gap:
            timeline.info[msg.sequence] = SegmentInfo(
                msg.start, msg.duration, msg.first_frame_arrival, msg.part, msg.renditions
            )
        if msg.rendition == "source" and not self._lists_source(msg):
            return  # transcoded renditions are listed instead
        if msg.broadcast == st.current or st.current is None:
            st.expected |= set(msg.renditions or (msg.rendition,))
        r = self._rendition(st, msg.rendition)
        nxt = r.next_seq.setdefault(msg.broadcast, 0)
        if msg.sequence < nxt:
            if not msg.gap and (msg.broadcast, msg.sequence) in r.gaps:
                self._heal(st, r, timeline, msg, out)
            return  # otherwise a repeated delivery of a segment already listed
        old = r.pending.get((msg.broadcast, msg.sequence))
        if old is None or (old[0].gap and not msg.gap):
            r.pending[(msg.broadcast, msg.sequence)] = (msg, now)
        if len(r.pending) > self.max_pending:  # something is missing for too long: move on
            self.stats.overflow += 1
            log.warning("%s/%s: %d segments waiting; listing segment %d as a gap", st.name, r.name,
                        len(r.pending), nxt)  # fmt: skip
            r.pending[(msg.broadcast, nxt)] = (self._gap(st, r, timeline, msg.broadcast, nxt), now)
        self._drain(st, r, timeline, msg.broadcast, out)

    def _drain(
        self, st: StreamState, r: RenditionState, tl: BroadcastTimeline, broadcast: str,
        out: list[Action],
    ) -> None:  # fmt: skip
        nxt = r.next_seq.get(broadcast, 0)
        listed: list[SegmentReady] = []
        while (broadcast, nxt) in r.pending:
            seg, _ = r.pending.pop((broadcast, nxt))
            pdt = self._pdt(tl, seg)
            out.append(Record(seg, pdt))  # recorded before it is listed
            if seg.gap:
                r.gaps.add((broadcast, nxt))
            self._append(st, r, tl, seg, pdt)
            nxt += 1
            listed.append(seg)
        r.next_seq[broadcast] = nxt
        if not listed:
            return
        self.stats.listed += len(listed)
        for key in [k for k in r.parts_waiting if k[0] == broadcast and k[1] < nxt]:
            del r.parts_waiting[key]  # parts of segments now listed
        r.parts_whole = {k for k in r.parts_whole if k[0] == broadcast and k[1] >= nxt}
        grew = broadcast == st.current and self._list_parts(st, r, tl, broadcast)[1]
        out.append(self._put(st, r))
        if grew:  # the others advertise the new PART-TARGET too
            self._put_others(st, r, out)
        self._write_master(st, out)
        if st.end_pending and self._caught_up(st):
            self._end_stream(st, out)
        out.extend(Listed(s) for s in listed)

    def _pdt(self, tl: BroadcastTimeline, seg: SegmentReady) -> float:
        return tl.anchors.setdefault(seg.part, seg.first_frame_arrival - seg.start) + seg.start

    def _heal(
        self, st: StreamState, r: RenditionState, tl: BroadcastTimeline, seg: SegmentReady,
        out: list[Action],
    ) -> None:  # fmt: skip
        r.gaps.discard((seg.broadcast, seg.sequence))
        pdt = self._pdt(tl, seg)
        out.append(Record(seg, pdt, heal=True))
        if seg.heal:
            self.stats.healed += 1
        else:
            self.stats.late += 1
        msn = tl.msn_base + seg.sequence
        entry = self._entry(st, r, seg, msn, pdt)
        if entry is not None and r.playlist.heal(entry):
            self._account(r, seg)
            out.append(self._put(st, r))
            self._write_master(st, out)
        if tl.vod_written:
            out.append(RewriteVod(st.name, seg.broadcast))
        log.info("%s/%s: segment %d healed (%s)", st.name, r.name, seg.sequence,
                 "re-encoded" if seg.heal else "arrived late")  # fmt: skip

    # -------------------------------------------------------------- parts (LL-HLS)
    def _on_part(self, msg: PartReady, now: float, out: list[Action]) -> None:
        _check_part(msg)
        if not self.ll_hls or (msg.rendition == "source" and not self._lists_source(msg)):
            return
        st = self.stream(msg.stream)
        tl = st.broadcasts.get(msg.broadcast)
        if tl is None and (st.current is None or msg.broadcast > st.current):
            # a part before its BroadcastStarted: treat as started (ids sort by start time)
            self._on_started(BroadcastStarted(msg.stream, msg.broadcast, msg.produced_at))
            tl = st.broadcasts[msg.broadcast]
        if tl is None or msg.broadcast != st.current:
            self.stats.parts_late += 1  # a broadcast that is over: whole segments are what counts
            return
        r = self._rendition(st, msg.rendition)
        nxt = r.next_seq.setdefault(msg.broadcast, 0)
        seg_key = (msg.broadcast, msg.sequence)
        if msg.sequence < nxt:
            self.stats.parts_late += 1
            log.info("%s/%s: part %d of segment %d came after the segment was listed; ignored",
                     st.name, r.name, msg.index, msg.sequence)  # fmt: skip
            return
        key = (msg.broadcast, msg.sequence, msg.index)
        if key in r.parts_waiting or (msg.sequence == nxt and msg.index < r.listed_parts(msg.broadcast)):
            self.stats.parts_duplicate += 1  # a repeated delivery (parts are never listed twice)
            return
        r.parts_seen.add(msg.broadcast)
        if seg_key in r.parts_whole:
            return  # its segment is listed whole
        if msg.duration > PART_LIMIT * self.part_target:
            self._whole(st, r, seg_key, f"part {msg.index} lasts {msg.duration:.3f} s")
            return
        r.parts_waiting[key] = (msg, now)
        if len(r.parts_waiting) > self.max_pending:
            self.stats.overflow += 1
            self._whole(st, r, seg_key, f"{len(r.parts_waiting)} parts waiting")
            return
        if msg.sequence == nxt:
            listed, grew = self._list_parts(st, r, tl, msg.broadcast)
            if listed:
                out.append(self._put(st, r))
            if grew:
                self._put_others(st, r, out)

    def _whole(self, st: StreamState, r: RenditionState, seg_key: tuple[str, int], why: str) -> None:
        """Segment ``seg_key`` gets no more parts: it is listed whole when it completes
        (parts already listed stay until then: listed parts are never changed)."""
        if seg_key in r.parts_whole:
            return
        r.parts_whole.add(seg_key)
        for key in [k for k in r.parts_waiting if k[:2] == seg_key]:
            del r.parts_waiting[key]
        log.warning("%s/%s: segment %d will be listed whole (%s)", st.name, r.name, seg_key[1], why)

    def _list_parts(
        self, st: StreamState, r: RenditionState, tl: BroadcastTimeline, broadcast: str
    ) -> tuple[bool, bool]:
        """List the waiting parts of the segment in progress that are next in line.
        Returns whether any was listed, and whether the stream's PART-TARGET grew."""
        nxt = r.next_seq.get(broadcast, 0)
        seg_key = (broadcast, nxt)
        if seg_key in r.parts_whole:
            return False, False
        if r.parts_open != seg_key:
            r.parts_open, r.parts_listed = seg_key, []
            r.playlist.drop_in_progress()
        listed = grew = False
        while (broadcast, nxt, len(r.parts_listed)) in r.parts_waiting:
            msg, _ = r.parts_waiting.pop((broadcast, nxt, len(r.parts_listed)))
            if r.parts_listed and r.parts_listed[-1].final:
                self._whole(st, r, seg_key, f"part {msg.index} after the final part")
                break
            g = self._list_part(st, r, tl, msg)
            if g is None:
                self._whole(st, r, seg_key, f"part {msg.index} does not fit the playlist")
                break
            listed, grew = True, grew or g
        return listed, grew

    def _list_part(
        self, st: StreamState, r: RenditionState, tl: BroadcastTimeline, msg: PartReady, gap: bool = False
    ) -> bool | None:
        """Add one part to the playlist (None: it cannot be listed); True when the
        stream's PART-TARGET grew for it."""
        base = keys.stream_prefix(st.name)
        pl = r.playlist
        cur = pl.in_progress
        init_uri = keys.relative(msg.init_key, base) if msg.init_key else (cur.init_uri if cur else r.last_init)
        msn = tl.msn_base + msg.sequence
        if not init_uri or (cur is not None and (cur.msn, cur.init_uri) != (msn, init_uri)):
            return None
        if cur is None and pl.segments and msn != pl.next_msn:
            return None  # the playlist skipped a number here (a gap it could not list)
        grew = False
        wanted = ceil_ms(max(self.part_target, msg.duration))
        if wanted > st.part_target:  # PART-TARGET bounds every part (8216bis 4.4.4.9)
            st.part_target, grew = wanted, True
        pl.part_target = st.part_target
        part = PlaylistPart(msg.index, keys.relative(msg.key, base), msg.duration, msg.independent, gap)
        if cur is None:  # the segment's own tags come before its first part
            discontinuity = r.discontinuity_next or (bool(r.last_init) and init_uri != r.last_init)
            pdt = tl.anchors.setdefault(msg.part, msg.produced_at - msg.start - msg.duration) + msg.start
            pl.add_part(part, msn=msn, init_uri=init_uri, program_date_time=pdt, discontinuity=discontinuity)
        else:
            pl.add_part(part, msn=msn, init_uri=init_uri)
        r.parts_listed.append(msg)
        self.stats.parts_listed += 1
        return grew

    def _gap_parts(
        self, st: StreamState, r: RenditionState, tl: BroadcastTimeline, broadcast: str, out: list[Action]
    ) -> None:
        """A part of the segment in progress did not come while a later one is here:
        list the missing ones as GAP=YES (8216bis 4.4.4.9), timed by their neighbours."""
        nxt = r.next_seq.get(broadcast, 0)
        seg_key = (broadcast, nxt)
        have = r.listed_parts(broadcast)
        later = sorted(i for (b, s, i) in r.parts_waiting if (b, s) == seg_key and i > have)
        if not later:
            return
        after = r.parts_waiting[(broadcast, nxt, later[0])][0]
        start: float | None = None
        if have:
            start = r.parts_listed[-1].start + r.parts_listed[-1].duration
        elif (info := tl.info.get(nxt)) is not None:
            start = info.start
        elif (prev := tl.info.get(nxt - 1)) is not None:
            start = prev.start + prev.duration
        each = (after.start - start) / (later[0] - have) if start is not None else 0.0
        if start is None or not 0 < each <= PART_LIMIT * self.part_target:
            self._whole(st, r, seg_key, f"part {have} did not come and cannot be timed")
            return
        log.warning("%s/%s: parts %d..%d of segment %d did not come; listing them as gaps", st.name,
                    r.name, have, later[0] - 1, nxt)  # fmt: skip
        if r.parts_open != seg_key:
            r.parts_open, r.parts_listed = seg_key, []
            r.playlist.drop_in_progress()
        grew = False
        for i in range(have, later[0]):
            missing = replace(after, index=i, start=start + (i - have) * each, duration=each, size=0,
                              key=keys.part(st.name, broadcast, r.name, nxt, i),
                              independent=False, final=False)  # fmt: skip
            g = self._list_part(st, r, tl, missing, gap=True)
            if g is None:
                self._whole(st, r, seg_key, f"part {i} did not come")
                return
            grew = grew or g
            self.stats.parts_gaps += 1
        _, more = self._list_parts(st, r, tl, broadcast)
        out.append(self._put(st, r))
        if grew or more:
            self._put_others(st, r, out)

    def _with_parts(
        self, st: StreamState, r: RenditionState, seg: SegmentReady, entry: PlaylistSegment
    ) -> PlaylistSegment:
        """``entry`` with the parts listed for it, if they make the whole segment; else
        without any (a Parent Segment and its parts hold the same media, 8216bis 3.2)."""
        if not self.ll_hls:
            return entry
        cur = r.playlist.in_progress
        listed = r.parts_listed if r.parts_open == (seg.broadcast, seg.sequence) else []
        why = ""
        if seg.gap:
            return entry  # a gap has no parts
        if not listed or cur is None or cur.msn != entry.msn:
            why = "no parts listed"
        elif not listed[-1].final:
            why = f"parts {listed[-1].index + 1}.. did not come"
        elif abs(sum(p.duration for p in listed) - seg.duration) > PART_SUM_TOLERANCE:
            why = f"its parts add up to {sum(p.duration for p in listed):.3f} s, not {seg.duration:.3f} s"
        elif (cur.init_uri, cur.discontinuity) != (entry.init_uri, entry.discontinuity):
            why = "its parts have another init segment"
        if not why:
            assert cur is not None
            return replace(entry, program_date_time=cur.program_date_time, parts=cur.parts)
        if seg.broadcast in r.parts_seen:
            self.stats.segments_whole += 1
            log.info("%s/%s: segment %d listed whole: %s", st.name, r.name, seg.sequence, why)
        return entry

    def _hint(self, st: StreamState, r: RenditionState) -> str | None:
        """The URI of the part expected next (EXT-X-PRELOAD-HINT), if one is."""
        b = st.current
        if b is None or b not in r.parts_seen or r.playlist.ended or not st.part_target:
            return None
        tl = st.broadcasts[b]
        nxt = r.next_seq.get(b, 0)
        have = r.listed_parts(b)
        seq, index = (nxt + 1, 0) if have and r.parts_listed[-1].final else (nxt, have)
        if (b, seq) in r.parts_whole or (tl.segments is not None and seq >= tl.segments):
            return None
        return keys.relative(keys.part(st.name, b, r.name, seq, index), keys.stream_prefix(st.name))

    # -------------------------------------------------------------- deadlines
    def _apply_deadlines(self, st: StreamState, now: float, out: list[Action]) -> None:
        b = st.current
        if b is None:
            return
        tl = st.broadcasts[b]
        for r in list(st.renditions.values()):
            since = r.blocked_since(b)
            while since is not None and now - since >= self.gap_after:
                self._force_gap(st, r, tl, b, now, out, "a later segment is here")
                since = r.blocked_since(b)
            since = r.parts_blocked_since(b)
            if since is not None and now - since >= self.gap_after:
                self._gap_parts(st, r, tl, b, out)
        if tl.segments is None or tl.ended_at is None or now - tl.ended_at < self.end_gap_after:
            return
        for name in sorted(st.expected or st.renditions):
            if name in self._hidden(st):
                continue
            late = self._rendition(st, name)
            while late.next_seq.get(b, 0) < tl.segments:
                self._force_gap(st, late, tl, b, now, out, "the publisher left")
        if st.end_pending and self._caught_up(st):
            self._end_stream(st, out)

    def _force_gap(
        self, st: StreamState, r: RenditionState, tl: BroadcastTimeline, broadcast: str, now: float,
        out: list[Action], why: str,
    ) -> None:  # fmt: skip
        nxt = r.next_seq.get(broadcast, 0)
        log.warning("%s/%s: segment %d did not come (%s); listing it as a gap", st.name, r.name, nxt, why)
        self.stats.gaps_listed += 1
        r.pending[(broadcast, nxt)] = (self._gap(st, r, tl, broadcast, nxt), now)
        self._drain(st, r, tl, broadcast, out)

    def _gap(
        self, st: StreamState, r: RenditionState, tl: BroadcastTimeline, broadcast: str, seq: int
    ) -> SegmentReady:
        info = tl.info.get(seq)
        if info is None:  # nothing at all was heard of it: estimate from its neighbours
            prev = tl.info.get(seq - 1)
            start = prev.start + prev.duration if prev else seq * self.target_duration
            info = SegmentInfo(start, self.target_duration,
                               prev.first_frame_arrival + prev.duration if prev else 0.0,
                               prev.part if prev else 0, prev.renditions if prev else ())  # fmt: skip
        return SegmentReady(
            stream=st.name, broadcast=broadcast, rendition=r.name, sequence=seq, start=info.start,
            duration=info.duration, init_key="", segment_key=keys.segment(st.name, broadcast, r.name, seq),
            size=0, first_frame_arrival=info.first_frame_arrival, renditions=info.renditions, gap=True,
            part=info.part,
        )  # fmt: skip

    # -------------------------------------------------------------- playlists
    def _entry(
        self, st: StreamState, r: RenditionState, seg: SegmentReady, msn: int, pdt: float
    ) -> PlaylistSegment | None:
        base = keys.stream_prefix(st.name)
        init_uri = keys.relative(seg.init_key, base) if seg.init_key else r.last_init
        if not init_uri:
            return None
        return PlaylistSegment(
            msn=msn, uri=keys.relative(seg.segment_key, base), duration=seg.duration,
            init_uri=init_uri, program_date_time=pdt, gap=seg.gap,
        )  # fmt: skip

    def _append(
        self, st: StreamState, r: RenditionState, tl: BroadcastTimeline, seg: SegmentReady,
        pdt: float,
    ) -> None:  # fmt: skip
        msn = tl.msn_base + seg.sequence
        if msn < r.playlist.next_msn:  # duplicate delivery of a segment already listed
            return
        entry = self._entry(st, r, seg, msn, pdt)
        if entry is None:  # a gap before this rendition ever had an init segment
            log.warning("%s/%s: gap at the start, segment %d not listed", st.name, r.name, msn)
            return
        discontinuity = r.discontinuity_next or (bool(r.last_init) and entry.init_uri != r.last_init)
        entry = replace(entry, discontinuity=discontinuity)
        r.playlist.append(self._with_parts(st, r, seg, entry))
        r.parts_open, r.parts_listed = None, []
        r.discontinuity_next = False
        r.last_init = entry.init_uri
        st.next_msn = max(st.next_msn, msn + 1)
        if not seg.gap:
            self._account(r, seg)

    def _account(self, r: RenditionState, seg: SegmentReady) -> None:
        if seg.duration > 0:
            bits = seg.size * 8
            r.peak_bps = max(r.peak_bps, int(bits / seg.duration))
            r.total_bits += bits
            r.total_seconds += seg.duration
        r.codecs = seg.codecs or r.codecs
        r.width, r.height = seg.width or r.width, seg.height or r.height
        if seg.frame_rate and (seg.duration >= 0.9 * self.target_duration or not r.frame_rate):
            r.frame_rate = seg.frame_rate  # a short last segment is a poor estimate

    def _playlist(self, st: StreamState) -> MediaPlaylist:
        return MediaPlaylist(self.window, self.target_duration, low_latency=self.ll_hls,
                             part_target=st.part_target or None)  # fmt: skip

    def _rendition(self, st: StreamState, name: str) -> RenditionState:
        r = st.renditions.get(name)
        if r is None:  # a rendition that first appears mid-stream starts at the right msn
            r = st.renditions[name] = RenditionState(name, self._playlist(st))
        return r

    def _put(self, st: StreamState, r: RenditionState) -> PutPlaylist:
        pl = r.playlist
        if self.ll_hls:
            pl.part_target = st.part_target or None  # the same in every rendition (6.2.4)
            pl.preload_hint = self._hint(st, r)
            reports = (o.playlist.report(f"{o.name}.m3u8") for n, o in sorted(st.renditions.items()) if o is not r)
            pl.rendition_reports = tuple(rep for rep in reports if rep is not None)
        return PutPlaylist(
            st.name, r.name, keys.live_playlist(st.name, r.name), pl.render(), pl.next_msn, pl.ended,
            pl.last_part,
        )  # fmt: skip

    def _put_others(self, st: StreamState, r: RenditionState, out: list[Action]) -> None:
        """The stream's PART-TARGET changed: every playlist advertises the new one."""
        for o in st.renditions.values():
            if o is not r and (o.playlist.segments or o.playlist.in_progress):
                out.append(self._put(st, o))

    def _write_master(self, st: StreamState, out: list[Action]) -> None:
        text = self._master(st)
        if text is not None and text != st.master_text:
            st.master_text = text
            out.append(PutMaster(st.name, keys.live_master(st.name), text))

    def _master(self, st: StreamState) -> str | None:
        ready = {n for n, r in st.renditions.items() if r.playlist.segments and r.codecs}
        if st.expected - ready - self._hidden(st):
            return None  # list every rendition at once, or players miss the late ones
        names = sorted(ready & st.expected or ready)
        if not names:
            return None
        audio = st.renditions.get("audio") if "audio" in names else None
        variants = []
        for n in names:
            if n == "audio":
                continue
            v = st.renditions[n].variant()
            if audio is not None:
                a = audio.variant()
                if a.codecs in v.codecs.split(","):  # the source: its own audio is muxed in
                    v = replace(v, audio_group="audio")
                else:  # a video-only rendition plays with the shared audio rendition
                    v = replace(v, bandwidth=v.bandwidth + a.bandwidth,
                                average_bandwidth=v.average_bandwidth + a.average_bandwidth,
                                codecs=f"{v.codecs},{a.codecs}", audio_group="audio")  # fmt: skip
            variants.append(v)
        return render_multivariant(variants, AudioRendition("audio.m3u8") if audio else None)

    def _lists_source(self, msg: SegmentReady | PartReady) -> bool:
        """A source segment or part is listed: always (``include_source``), or when it
        stands in for the ladder rung of its own height (the segmenter's plan says so)."""
        if self.include_source:
            return True
        return msg.listed if isinstance(msg, PartReady) else "source" in msg.renditions

    def _hidden(self, st: StreamState) -> set[str]:
        """Renditions made but not listed: the source, unless listed (it passes through)."""
        return set() if self.include_source or "source" in st.expected else {"source"}


class BadSegment(ValueError):
    """A SegmentReady no stage would send: its keys do not name its own objects."""


def _check(msg: SegmentReady) -> None:
    """A playlist lists only the stream's own objects, at the place the message claims."""
    seg = keys.parse(msg.segment_key)
    if seg is None or seg.kind != "segment" or (seg.stream, seg.broadcast, seg.rendition,
                                                 seg.sequence) != (msg.stream, msg.broadcast,
                                                                   msg.rendition, msg.sequence):  # fmt: skip
        raise BadSegment(f"segment key {msg.segment_key!r} is not {msg.rendition} #{msg.sequence} "
                         f"of {msg.stream}/{msg.broadcast}")  # fmt: skip
    if msg.init_key:
        init = keys.parse(msg.init_key)
        if init is None or init.kind != "init" or (init.stream, init.broadcast) != (msg.stream, msg.broadcast):
            raise BadSegment(f"init key {msg.init_key!r} is not an init segment of {msg.stream}/{msg.broadcast}")
    if msg.sequence < 0 or not msg.duration >= 0 or msg.size < 0:
        raise BadSegment(f"segment {msg.sequence} with duration {msg.duration} and size {msg.size}")


def _check_part(msg: PartReady) -> None:
    """A part, like a segment, names the stream's own objects at the place it claims."""
    if msg.key != keys.part(msg.stream, msg.broadcast, msg.rendition, max(msg.sequence, 0), max(msg.index, 0)):
        raise BadSegment(f"part key {msg.key!r} is not part {msg.index} of {msg.rendition} #{msg.sequence} "
                         f"of {msg.stream}/{msg.broadcast}")  # fmt: skip
    if msg.init_key:
        init = keys.parse(msg.init_key)
        if init is None or init.kind != "init" or (init.stream, init.broadcast) != (msg.stream, msg.broadcast):
            raise BadSegment(f"init key {msg.init_key!r} is not an init segment of {msg.stream}/{msg.broadcast}")
    if msg.sequence < 0 or msg.index < 0 or not msg.duration > 0 or msg.size < 0:
        raise BadSegment(f"part {msg.index} of segment {msg.sequence} with duration {msg.duration} "
                         f"and size {msg.size}")  # fmt: skip


def _min(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)


def seeded_floor(actions: Iterable[Action]) -> dict[str, int]:
    """The next msn each media playlist write in ``actions`` reaches (tests, takeover)."""
    return {a.key: a.next_msn for a in actions if isinstance(a, PutPlaylist)}
