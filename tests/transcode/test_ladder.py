from __future__ import annotations

import pytest

from tidecast.segmenter.plan import plan_for
from tidecast.transcode.job import output_size
from tidecast.transcode.ladder import (
    DEFAULT_LADDER,
    Ladder,
    LadderError,
    parse_ladder,
    rungs_for_source,
)


def names(rungs: tuple) -> list[str]:  # type: ignore[type-arg]
    return [r.name for r in rungs]


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((3840, 2160), ["2160p", "1080p", "720p", "480p", "240p"]),
        ((1920, 1080), ["1080p", "720p", "480p", "240p"]),
        ((1280, 720), ["720p", "480p", "240p"]),
        ((854, 480), ["480p", "240p"]),
        ((640, 360), ["240p"]),
        ((1080, 1920), ["1080p", "720p", "480p", "240p"]),  # portrait: the short side counts
        ((320, 180), ["180p"]),  # smaller than every rung: one rung at its own size
    ],
)
def test_never_upscale(size: tuple[int, int], expected: list[str]) -> None:
    assert names(rungs_for_source(DEFAULT_LADDER, *size)) == expected


def test_output_sizes_keep_aspect_and_are_even() -> None:
    r720 = next(r for r in DEFAULT_LADDER if r.height == 720)
    assert output_size(r720, 1920, 1080) == (1280, 720)
    assert output_size(r720, 1080, 1920) == (720, 1280)
    r480 = next(r for r in DEFAULT_LADDER if r.height == 480)
    w, h = output_size(r480, 1920, 1080)
    assert (w, h) == (854, 480) and w % 2 == 0


def test_default_ladder_is_the_founding_design() -> None:
    assert [(r.height, r.video_kbps, r.profile) for r in DEFAULT_LADDER] == [
        (2160, 16000, "high"), (1080, 6000, "high"), (720, 3500, "main"),
        (480, 1200, "main"), (240, 400, "baseline"),
    ]  # fmt: skip


def test_parse_ladder() -> None:
    rungs = parse_ladder("720:2000, 360:700:baseline")
    assert [(r.name, r.video_kbps, r.profile) for r in rungs] == [("720p", 2000, "main"), ("360p", 700, "baseline")]
    for bad in ("", "720", "abc:100", "720:2000:fancy", "720:1,720:2000", "99999:100", "720:2000,720:1000"):
        with pytest.raises(LadderError):
            parse_ladder(bad)


@pytest.mark.parametrize(
    ("size", "passed", "encoded"),
    [
        ((1920, 1080), "1080p", ["720p", "480p", "240p"]),
        ((1280, 720), "720p", ["480p", "240p"]),
        ((1080, 1920), "1080p", ["720p", "480p", "240p"]),  # portrait: the short side counts
        ((1920, 800), None, ["720p", "480p", "240p"]),  # between rungs: every rung encoded
        ((640, 360), None, ["240p"]),
        ((320, 240), None, ["240p"]),  # its height, but no rung below: the one rung is made to budget
        ((320, 180), None, ["180p"]),
    ],
)
def test_passthrough_lists_the_source_for_the_rung_of_its_height(
    size: tuple[int, int], passed: str | None, encoded: list[str]
) -> None:
    on = Ladder(DEFAULT_LADDER, passthrough=True)
    top = on.passed_through(*size)
    assert (top.name if top else None) == passed and on.passes_through(*size) == (passed is not None)
    assert names(on.plan(*size)) == encoded
    off = Ladder(DEFAULT_LADDER)
    assert off.passed_through(*size) is None
    assert names(off.plan(*size)) == names(rungs_for_source(DEFAULT_LADDER, *size))
    plan = plan_for(on, *size)
    assert plan.renditions(audio=True) == (("source",) if passed else ()) + tuple(encoded) + ("audio",)
