"""Transcode backpressure policy: lag from the oldest outstanding job, one more top
rung skipped per new job while lagging, one rung back per job once recovered."""

from __future__ import annotations

import pytest

from tidecast.segmenter.backpressure import Backpressure

LADDER = ("720p", "480p", "240p")  # top first


def finish(bp: Backpressure, seq: int, rungs: tuple[str, ...] = LADDER) -> None:
    for r in rungs:
        bp.done(seq, r)


def test_no_lag_keeps_the_full_ladder() -> None:
    bp = Backpressure(threshold=4.0)
    for seq in range(10):
        d = bp.plan(seq, LADDER, now=seq * 2.0)
        assert d.skip == () and not d.changed and d.lag == 0.0
        finish(bp, seq)
    assert bp.lag(100.0) == 0.0 and bp.degraded_segments == 0


def test_lag_is_the_age_of_the_oldest_outstanding_job() -> None:
    bp = Backpressure(threshold=100.0)
    assert bp.lag(5.0) == 0.0
    bp.plan(0, LADDER, now=10.0)
    bp.plan(1, LADDER, now=12.0)
    assert bp.lag(13.0) == 3.0
    bp.done(0, "720p")
    bp.done(0, "480p")
    assert bp.lag(13.0) == 3.0, "one rung of job 0 is still missing"
    bp.done(0, "240p")
    assert bp.lag(13.0) == 1.0, "job 1 is the oldest now"
    bp.done(1, "source")  # renditions the job never asked for change nothing
    bp.done(7, "720p")  # nor do jobs it does not know
    assert bp.lag(13.0) == 1.0
    finish(bp, 1)
    assert bp.lag(20.0) == 0.0 and bp.outstanding() == 0


def test_degrades_one_rung_per_new_job_never_the_lowest() -> None:
    bp = Backpressure(threshold=4.0)
    bp.plan(0, LADDER, now=0.0)  # job 0 is stuck
    assert bp.plan(1, LADDER, now=2.0).skip == ()  # lag 2 <= 4
    assert bp.plan(2, LADDER, now=4.0).skip == (), "lag == threshold is not above it"
    d = bp.plan(3, LADDER, now=6.0)
    assert d.skip == ("720p",) and d.changed and d.degrading and d.lag == 6.0
    d = bp.plan(4, LADDER, now=8.0)
    assert d.skip == ("720p", "480p") and d.changed and d.degrading
    for seq in range(5, 9):  # the lowest rung is never skipped
        d = bp.plan(seq, LADDER, now=seq * 2.0)
        assert d.skip == ("720p", "480p") and not d.changed
    assert bp.degraded_segments == 6


def test_recovers_one_rung_per_new_job_below_half_the_threshold() -> None:
    bp = Backpressure(threshold=4.0)
    bp.plan(0, LADDER, now=0.0)
    bp.plan(1, LADDER, now=5.0)  # lag 5: skip 720p
    bp.plan(2, LADDER, now=6.0)  # lag 6: skip 720p + 480p
    assert bp.skipped == ("720p", "480p")
    finish(bp, 0)
    finish(bp, 1)
    # job 2 only waits for what it encodes: 240p
    bp.done(2, "240p")
    assert bp.outstanding() == 0
    d = bp.plan(3, LADDER, now=7.0)
    assert d.skip == ("720p",) and d.changed and not d.degrading
    d = bp.plan(4, LADDER, now=8.0)  # job 3 outstanding for 1 s < 2: recover further
    assert d.skip == () and d.changed
    d = bp.plan(5, LADDER, now=9.0)
    assert d.skip == () and not d.changed


def test_holds_between_half_and_full_threshold() -> None:
    bp = Backpressure(threshold=4.0)
    bp.plan(0, LADDER, now=0.0)
    assert bp.plan(1, LADDER, now=5.0).skip == ("720p",)
    finish(bp, 0)
    # job 1 (skipping 720p) outstanding for 3 s: between 2 and 4, nothing changes
    d = bp.plan(2, LADDER, now=8.0)
    assert d.skip == ("720p",) and not d.changed and d.lag == 3.0


def test_a_gap_counts_as_done() -> None:
    """A dead-lettered job comes back as gaps: its renditions are announced all the same."""
    bp = Backpressure(threshold=4.0)
    bp.plan(0, LADDER, now=0.0)
    for r in LADDER:  # SegmentReady(gap=True) for every rung
        bp.done(0, r)
    assert bp.plan(1, LADDER, now=30.0).skip == ()


def test_a_single_rung_ladder_is_never_skipped() -> None:
    bp = Backpressure(threshold=1.0)
    for seq in range(5):
        assert bp.plan(seq, ("240p",), now=seq * 10.0).skip == ()
    assert bp.degraded_segments == 0


def test_a_smaller_ladder_clamps_the_level() -> None:
    bp = Backpressure(threshold=1.0)
    bp.plan(0, LADDER, now=0.0)
    bp.plan(1, LADDER, now=2.0)
    assert bp.plan(2, LADDER, now=4.0).skip == ("720p", "480p")
    # the source shrank: two rungs fit now, the lowest of them is kept
    assert bp.plan(3, ("480p", "240p"), now=6.0).skip == ("480p",)


def test_outstanding_jobs_are_bounded() -> None:
    bp = Backpressure(threshold=1.0, max_outstanding=3)
    for seq in range(10):
        bp.plan(seq, LADDER, now=float(seq))
    assert bp.outstanding() == 3
    assert bp.lag(10.0) == 3.0  # jobs 7, 8, 9 are kept


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Backpressure(threshold=0.0)
