"""``tidecast bench g2g``'s arithmetic and playlist reading (the run itself is the bench:
minutes of Chromium, the ladder and the edge)."""

from __future__ import annotations

import asyncio
import math

from tests.llhls import ll_playlist
from tidecast.bench import g2g


def test_percentiles_slope_and_first_against_last() -> None:
    assert g2g.percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0
    assert g2g.percentile(list(map(float, range(1, 101))), 0.95) == 95.0
    assert math.isnan(g2g.percentile([], 0.5))
    growing = [(t / 10, 1.0 + 0.01 * t / 10) for t in range(1200)]  # +0.01 s of g2g per second
    assert abs(g2g.slope_per_minute(growing) - 0.6) < 1e-9
    first, last = g2g.first_last(growing, 10)
    assert abs(first - 1.05) < 0.01 and abs(last - 2.14) < 0.01
    assert g2g.rendition_shares([720, 720, 720, 480]) == "720p:75% 480p:25%"


def test_parts_and_segments_are_read_with_their_media_times() -> None:
    text = ll_playlist(4, 2, media_sequence=3)  # segments 3..6, parts of 4..6 and 7.0, 7.1
    parts = [(int(m), int(i), float(d)) for d, m, i in g2g.PART_URI.findall(text)]
    assert [(m, i) for m, i, _ in parts] == [(m, i) for m in (4, 5, 6) for i in range(6)] + [
        (7, 0),
        (7, 1),
    ]
    segments = [(int(m), float(d)) for d, m in g2g.SEGMENT_URI.findall(text)]
    assert segments == [(3, 2.0), (4, 2.0), (5, 2.0), (6, 2.0)]


def test_the_watcher_times_each_part_from_its_end() -> None:
    watcher = g2g.PartWatcher("http://unused", start=1000.0)
    watcher.seen = {(0, i) for i in range(12)}  # past the parts listed before it asked
    watcher._note((2, 3), 2 * g2g.SEGMENT_TARGET + 4 / 3, now=1005.5)
    watcher._note((2, 3), 2 * g2g.SEGMENT_TARGET + 4 / 3, now=1009.0)  # listed again: no new figure
    assert len(watcher.lags) == 1 and abs(watcher.lags[0] - (5.5 - 4 - 4 / 3)) < 1e-9


def test_an_unknown_configuration_is_refused() -> None:
    import argparse

    args = argparse.Namespace(
        configs="ll-pass,nope", seconds=1, warmup=0, sources=None, part_target=None
    )
    assert asyncio.run(g2g.run(args)) == 2
