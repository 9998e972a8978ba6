from __future__ import annotations

import pytest

from tidecast.transcode.job import output_size
from tidecast.transcode.ladder import DEFAULT_LADDER, LadderError, parse_ladder, rungs_for_source


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
