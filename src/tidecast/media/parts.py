"""LL-HLS parts: the one boundary rule, and cutting a rendition's frames into parts.

The rule (every stage: the segmenter's source parts and every rendition's): a frame
with presentation time ``pts`` in a segment starting at ``start`` belongs to part
``floor((pts - start) / part_target + 1e-3)``. ``start`` is the presentation time of
the segment's first frame (its keyframe). The small epsilon puts a frame that falls
on a boundary up to rounding (1/3 s at 30 fps) in the part it starts.

Sans-I/O: :class:`SourceTimeline` learns the source frames of one segment as its
parts come in; a :class:`RenditionCutter` per rendition takes that rendition's encoded
frames as the encoder writes them and returns each part (a CMAF chunk: ``moof`` +
``mdat``, on the source timeline) the moment its last frame is in — it knows which
frames a part holds from the source, so it never waits for the next part's first
frame.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass

from tidecast.media import fmp4
from tidecast.media.errors import MediaError
from tidecast.media.flv import AvcFrame

__all__ = ["CutPart", "RenditionCutter", "SourceTimeline", "boundary", "part_index", "part_of"]

EPSILON = 1e-3
TIMESCALE = fmp4.VIDEO_TIMESCALE
MS = TIMESCALE // 1000
MATCH_TOLERANCE = MS  # ticks: an encoder's millisecond timestamp vs the source's ticks


def part_index(pts: float, start: float, part_target: float) -> int:
    """The part of a frame shown at ``pts`` (seconds) in a segment starting at ``start``."""
    if not part_target > 0:
        raise ValueError(f"part_target must be positive, got {part_target}")
    return max(0, math.floor((pts - start) / part_target + EPSILON))


def part_of(pts: int, start: int, part_target: float) -> int:
    """``part_index`` on 90 kHz ticks."""
    if not part_target > 0:
        raise ValueError(f"part_target must be positive, got {part_target}")
    return max(0, math.floor((pts - start) / (part_target * TIMESCALE) + EPSILON))


def boundary(index: int, start: int, part_target: float) -> int:
    """The first tick of part ``index``: a frame belongs to part ``index`` or later
    exactly when its pts is at or after it."""
    if index <= 0:
        return start
    t = start + math.ceil((index - EPSILON) * part_target * TIMESCALE)
    while part_of(t - 1, start, part_target) >= index:  # float rounding, either way
        t -= 1
    while part_of(t, start, part_target) < index:
        t += 1
    return t


class SourceTimeline:
    """The source frames of one segment known so far (presentation times, 90 kHz)."""

    def __init__(self, start: int, part_target: float) -> None:
        self.start = start
        self.part_target = part_target
        self._pts: list[int] = []  # sorted
        self._decode_duration: dict[int, int] = {}  # pts -> the sample's duration
        self._decode_end: int | None = None  # dts + duration of the last sample
        self._first_cts: int | None = None
        self._min_cts = 0
        self.ended = False

    def add(self, samples: Iterable[fmp4.TimedSample]) -> None:
        for s in samples:
            if self.ended:
                raise MediaError("source frames after the end of the segment")
            if self._first_cts is None:
                self._first_cts = s.cts_offset
            self._min_cts = min(self._min_cts, s.cts_offset)
            pts = s.pts
            if pts in self._decode_duration:
                raise MediaError(f"two source frames at pts {pts}")
            bisect.insort(self._pts, pts)
            self._decode_duration[pts] = s.duration
            self._decode_end = s.dts + s.duration

    def end(self) -> None:
        """No more frames: the segment is complete."""
        self.ended = True

    @property
    def frames(self) -> int:
        return len(self._pts)

    @property
    def decode_end(self) -> int | None:
        return self._decode_end

    @property
    def end_pts(self) -> int:
        """Where the last frame's presentation ends (the next segment's first frame)."""
        if self._decode_end is None or self._first_cts is None:
            return self.start
        return self._decode_end + self._first_cts

    def part(self, pts: int) -> int:
        return part_of(pts, self.start, self.part_target)

    @property
    def last_pts(self) -> int | None:
        return self._pts[-1] if self._pts else None

    @property
    def last_part(self) -> int:
        return self.part(self._pts[-1]) if self._pts else 0

    def stable(self, index: int) -> bool:
        """Every source frame of parts up to ``index`` is known: frames still to come
        are decoded at or after the known decode end, so shown no earlier."""
        if self.ended:
            return True
        if self._decode_end is None:
            return False
        return self.part(self._decode_end + self._min_cts) > index

    def count(self, index: int) -> int:
        """Known source frames in part ``index``."""
        lo = bisect.bisect_left(self._pts, boundary(index, self.start, self.part_target))
        hi = bisect.bisect_left(self._pts, boundary(index + 1, self.start, self.part_target))
        return hi - lo

    def match(self, ms: int) -> int:
        """The source frame an encoded frame stamped ``ms`` (milliseconds) is."""
        ticks = ms * MS
        i = bisect.bisect_left(self._pts, ticks - MATCH_TOLERANCE)
        if i < len(self._pts) and abs(self._pts[i] - ticks) <= MATCH_TOLERANCE:
            return self._pts[i]
        near = self._pts[max(0, i - 2) : i + 2]
        raise MediaError(f"an encoded frame at {ms} ms is no source frame of the segment "
                         f"(nearest source frames at {[p / MS for p in near]} ms)")  # fmt: skip

    def duration(self, pts: int) -> int:
        """How long the frame at ``pts`` is shown: up to the next frame (or the end)."""
        i = bisect.bisect_right(self._pts, pts)
        if i < len(self._pts):
            return self._pts[i] - pts
        if self.ended:
            return max(1, self.end_pts - pts)
        return self._decode_duration[pts]  # in order (no reordering): the same


@dataclass(frozen=True, slots=True)
class CutPart:
    """One part of a rendition: a CMAF chunk on the source timeline."""

    index: int
    data: bytes  # moof + mdat
    start: int  # pts (= dts) of its first frame, ticks
    duration: int  # ticks
    independent: bool  # starts with a keyframe
    final: bool  # the last part of the segment
    frames: int


class RenditionCutter:
    """Cuts one rendition's encoded frames into parts by the boundary rule.

    ``first_part`` is the first part this encode makes (a resumed encode starts at a
    later boundary); ``sequence`` numbers the fragments (``mfhd``).
    """

    def __init__(self, timeline: SourceTimeline, first_part: int, sequence: int) -> None:
        self.timeline = timeline
        self.next_part = first_part
        self.sequence = sequence
        self._pending: list[tuple[int, AvcFrame]] = []
        self.done = False  # the final part was cut
        self._last_pts: int | None = None

    def add(self, frame: AvcFrame) -> list[CutPart]:
        if self.done:
            raise MediaError(f"an encoded frame at {frame.pts} ms after the segment's last part")
        if frame.pts != frame.dts:
            raise MediaError("the encoder reordered frames (B-frames): parts need them in order")
        pts = self.timeline.match(frame.pts)
        if self._last_pts is not None and pts <= self._last_pts:
            raise MediaError(f"encoded frames out of order at {frame.pts} ms")
        self._last_pts = pts
        index = self.timeline.part(pts)
        if index < self.next_part:
            raise MediaError(f"an encoded frame at {frame.pts} ms belongs to part {index}, "
                             f"before part {self.next_part}")  # fmt: skip
        out: list[CutPart] = []
        if index > self.next_part:
            if self._pending:  # a later part began: this one is whole
                out.append(self._cut())
            self.next_part = index
        self._pending.append((pts, frame))
        return out + self.check()

    def check(self) -> list[CutPart]:
        """Parts the source now shows to be complete (call after the timeline grew)."""
        tl = self.timeline
        ready = self._pending and not self.done and tl.stable(self.next_part)
        if ready and len(self._pending) >= tl.count(self.next_part):
            return [self._cut()]
        return []

    def finish(self) -> list[CutPart]:
        """The encoder's output ended: what is left is the last part."""
        if not self._pending:
            return []
        if not self.timeline.ended:
            raise MediaError("the encoder stopped before the end of the source segment")
        return [self._cut()]

    def _cut(self) -> CutPart:
        tl = self.timeline
        frames, self._pending = self._pending, []
        samples = [fmp4.Sample(f.data, tl.duration(pts), 0, f.keyframe) for pts, f in frames]
        start = frames[0][0]
        final = tl.ended and frames[-1][0] == tl.last_pts
        seqnum = (self.sequence * 1000 + self.next_part + 1) & 0xFFFFFFFF
        data = fmp4.media_segment(seqnum, [fmp4.Fragment(fmp4.VIDEO_TRACK, start, samples)], styp=False)
        part = CutPart(self.next_part, data, start, sum(s.duration for s in samples),
                       frames[0][1].keyframe, final, len(frames))  # fmt: skip
        self.next_part += 1
        self.done = final
        return part
