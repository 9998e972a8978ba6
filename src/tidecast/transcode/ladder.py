"""The ABR ladder: rungs, their x264 settings, and which rungs a source gets."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


class LadderError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Rung:
    name: str  # rendition name, e.g. "720p"
    height: int
    video_kbps: int
    profile: str  # x264 profile: high / main / baseline
    audio_kbps: int = 128

    def width_for(self, src_w: int, src_h: int) -> int:
        """Width keeping the source aspect ratio, rounded to an even number."""
        return max(2, round(self.height * src_w / src_h / 2) * 2)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rung:
        return cls(**d)


DEFAULT_LADDER: tuple[Rung, ...] = (
    Rung("2160p", 2160, 16_000, "high"),
    Rung("1080p", 1080, 6_000, "high"),
    Rung("720p", 720, 3_500, "main"),
    Rung("480p", 480, 1_200, "main"),
    Rung("240p", 240, 400, "baseline", audio_kbps=96),
)


def parse_ladder(text: str) -> tuple[Rung, ...]:
    """``"1080:6000,720:3500:main,240:400:baseline"`` -> rungs (profile defaults by height)."""
    rungs = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        parts = item.split(":")
        try:
            height, kbps = int(parts[0].rstrip("p")), int(parts[1])
        except (IndexError, ValueError):
            raise LadderError(f"bad ladder rung {item!r}: use HEIGHT:KBPS[:PROFILE]") from None
        profile = (
            parts[2]
            if len(parts) > 2
            else ("high" if height >= 1080 else "main" if height > 240 else "baseline")
        )
        if profile not in ("high", "main", "baseline"):
            raise LadderError(f"bad profile {profile!r} in {item!r}")
        if not (64 <= height <= 4320 and 50 <= kbps <= 100_000):
            raise LadderError(f"rung {item!r} is out of range")
        rungs.append(Rung(f"{height}p", height, kbps, profile))
    if not rungs:
        raise LadderError("the ladder has no rungs")
    if len({r.name for r in rungs}) != len(rungs):
        raise LadderError("two rungs have the same height")
    return tuple(sorted(rungs, key=lambda r: -r.height))


def rungs_for_source(ladder: tuple[Rung, ...], src_w: int, src_h: int) -> tuple[Rung, ...]:
    """Never upscale: rungs at or below the source height (portrait: the short side).

    A source smaller than every rung still gets the smallest rung at its own
    height, so there is always at least one rendition.
    """
    short = min(src_w, src_h) if src_w and src_h else 0
    fit = tuple(r for r in ladder if r.height <= short)
    if fit or not ladder:
        return fit
    low = min(ladder, key=lambda r: r.height)
    even = short - short % 2
    return (Rung(f"{even}p", even, low.video_kbps, low.profile, low.audio_kbps),)


@dataclass(frozen=True, slots=True)
class Ladder:
    """The configured ladder; ``plan`` is what the segmenter asks of transcoding.

    ``passthrough``: a source at the very height of the top rung it gets is listed in
    that rung's place, untouched, when a rung below it is still encoded (so the ladder
    keeps a rung made to its budget for slow networks). Encoding a 1080p source again
    at 1080p costs the most of any rung (on 2 cores, 0.44 of a core at veryfast against
    0.50 for 720p, 480p and 240p together) for a picture no better than the source's.
    The source then plays at the bitrate it was published at.
    """

    rungs: tuple[Rung, ...] = ()
    passthrough: bool = False

    def __bool__(self) -> bool:
        return bool(self.rungs)

    def _fit(self, width: int, height: int) -> tuple[Rung, ...]:
        return tuple(sorted(rungs_for_source(self.rungs, width, height), key=lambda r: -r.height))

    def passed_through(self, width: int, height: int) -> Rung | None:
        """The rung the source stands in for, if any."""
        fit = self._fit(width, height)
        if self.passthrough and len(fit) >= 2 and fit[0].height == min(width, height):
            return fit[0]
        return None

    def passes_through(self, width: int, height: int) -> bool:
        return self.passed_through(width, height) is not None

    def plan(self, width: int, height: int) -> tuple[Rung, ...]:
        """The rungs a ``width`` x ``height`` source gets encoded into, top first."""
        top = self.passed_through(width, height)
        return tuple(r for r in self._fit(width, height) if r is not top)
