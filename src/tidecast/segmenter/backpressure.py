"""Transcode backpressure as a sans-I/O policy: timestamps in, rungs to skip out.

The segmenter knows which transcode jobs it published and sees their renditions
come back on the bus. The lag is the age of the oldest job still missing one of
its encoded rungs (0 when none is). While the lag is above the threshold, every
new job skips one more top rung than the last one did (never the lowest); once
it is below half the threshold, every new job gets one rung back. In between the
ladder stays as it is, so the level does not flap around the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    skip: tuple[str, ...]  # rungs the new job does not encode, top first
    lag: float  # seconds, when the job was planned
    previous: tuple[str, ...] = ()  # what the previous job skipped

    @property
    def changed(self) -> bool:
        return self.skip != self.previous

    @property
    def degrading(self) -> bool:
        return len(self.skip) > len(self.previous)


class Backpressure:
    def __init__(self, threshold: float, max_outstanding: int = 10_000) -> None:
        if not threshold > 0:
            raise ValueError(f"the lag threshold must be positive, got {threshold}")
        self.threshold = threshold
        self.max_outstanding = max_outstanding
        self.level = 0  # top rungs the last job skipped
        self.skipped: tuple[str, ...] = ()
        self.degraded_segments = 0  # jobs that skipped at least one rung
        # sequence -> (planned at, rungs not back yet); in planning order, oldest first;
        # planned at is None for a job planned before its segment was complete
        self._waiting: dict[int, tuple[float | None, set[str]]] = {}

    def lag(self, now: float) -> float:
        oldest = next(iter(self._waiting.values()), None)
        if oldest is None or oldest[0] is None:  # none, or still being cut: not late
            return 0.0
        return max(0.0, now - oldest[0])

    def outstanding(self) -> int:
        return len(self._waiting)

    def plan(self, sequence: int, rungs: Sequence[str], now: float, *, started: bool = True) -> Decision:
        """Which of ``rungs`` (top first) job ``sequence`` skips; the job is then
        outstanding until every rung it does encode is ``done``.

        ``started=False``: the job was published at its segment's first frame (LL-HLS);
        its age counts from ``complete`` (the segment's end), so the lag means the same
        as for a job published with a complete segment."""
        lag = self.lag(now)
        if lag > self.threshold:
            self.level += 1
        elif lag < self.threshold / 2:
            self.level -= 1
        self.level = max(0, min(self.level, len(rungs) - 1))
        skip = tuple(rungs[: self.level])
        previous, self.skipped = self.skipped, skip
        if skip:
            self.degraded_segments += 1
        encoded = set(rungs[self.level :])
        if encoded:
            self._waiting.pop(sequence, None)
            self._waiting[sequence] = (now if started else None, encoded)
            while len(self._waiting) > self.max_outstanding:  # nothing ever comes back
                del self._waiting[next(iter(self._waiting))]
        return Decision(skip, lag, previous)

    def complete(self, sequence: int, now: float) -> None:
        """The segment of job ``sequence`` (planned with ``started=False``) is complete."""
        job = self._waiting.get(sequence)
        if job is not None and job[0] is None:
            self._waiting[sequence] = (now, job[1])

    def done(self, sequence: int, rendition: str) -> None:
        """A rendition of job ``sequence`` is out (encoded, or announced as a gap)."""
        job = self._waiting.get(sequence)
        if job is None:
            return
        job[1].discard(rendition)
        if not job[1]:
            del self._waiting[sequence]
