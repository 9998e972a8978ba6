"""What the segmenter needs from transcoding: which rungs a source of a given size gets.

The segmenter owns these Protocols and transcoding implements them
(``tidecast.transcode.ladder.Ladder`` and its ``Rung``), so nothing under
``tidecast.segmenter`` imports ``tidecast.transcode``. A falsy plan (an empty
ladder, or ``None``) means no transcoding: the source is the only rendition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

SOURCE = "source"  # the rendition the segmenter cuts from what was published
AUDIO = "audio"  # the shared audio rendition next to a transcoded (video-only) ladder


class PlannedRung(Protocol):
    """One rendition a transcode job makes; ``to_dict`` is what the job carries."""

    @property
    def name(self) -> str: ...

    @property
    def height(self) -> int: ...

    def to_dict(self) -> dict[str, Any]: ...


class TranscodePlan(Protocol):
    def __bool__(self) -> bool:
        """False when nothing is transcoded."""
        ...

    def plan(self, width: int, height: int) -> Sequence[PlannedRung]:
        """The rungs a ``width`` x ``height`` source gets encoded into (never upscaled)."""
        ...

    def passes_through(self, width: int, height: int) -> bool:
        """True when the source itself is listed in place of the rung of its height."""
        ...


@dataclass(frozen=True, slots=True)
class SourcePlan:
    """What a source of one size gets, computed once per decoder configuration."""

    rungs: tuple[PlannedRung, ...]  # top first: what is encoded
    source: bool = False  # the source is listed too, in place of the rung of its height

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.rungs)

    def renditions(self, audio: bool) -> tuple[str, ...]:
        """Everything one source segment makes: the source if it is listed, the rungs, and
        the shared audio if any."""
        return ((SOURCE,) if self.source else ()) + self.names + ((AUDIO,) if audio else ())

    def job_rungs(self) -> tuple[dict[str, object], ...]:
        return tuple(r.to_dict() for r in self.rungs)


def plan_for(plan: TranscodePlan | None, width: int, height: int) -> SourcePlan:
    """The rungs for a source, top first (empty without a plan)."""
    if not plan:
        return SourcePlan(())
    rungs = tuple(sorted(plan.plan(width, height), key=lambda r: -r.height))
    return SourcePlan(rungs, source=bool(rungs) and plan.passes_through(width, height))
