"""Segment limits in the sans-I/O core: maximum duration, maximum size, no keyframe at all.

Each publisher that breaks one is refused with a description saying what was
wrong and what to change; what was cut before it is kept; a normal stream never
trips them.
"""

from __future__ import annotations

import pytest
from tests.segmenter.test_core import A, V, feed

from tidecast.media.frames import MediaFrame, TrackKind
from tidecast.segmenter.core import (
    MAX_SEGMENT_BYTES,
    Segmenter,
    SegmentLimitError,
    SourceSegment,
    default_max_duration,
)


def video(ts: int, key: bool = False, data: bytes = b"v") -> MediaFrame:
    return MediaFrame(TrackKind.VIDEO, ts, ts, data, key, 1.0)


def audio(ts: int, data: bytes = b"a") -> MediaFrame:
    return MediaFrame(TrackKind.AUDIO, ts, ts, data, True, 1.0)


def push_until_refused(seg: Segmenter, frames: list[MediaFrame]) -> tuple[list[SourceSegment], SegmentLimitError, int]:
    """Push frames until one is refused: (segments cut before, the error, its index)."""
    out: list[SourceSegment] = []
    for i, f in enumerate(frames):
        try:
            out += seg.push(f)
        except SegmentLimitError as exc:
            return out, exc, i
    raise AssertionError("no frame was refused")


def test_default_limits() -> None:
    assert default_max_duration(2.0) == 20.0
    assert default_max_duration(0.5) == 20.0  # the floor: an encoder's automatic GOP fits
    assert default_max_duration(4.0) == 40.0
    seg = Segmenter(target=2.0)
    assert seg.max_duration == 20.0 and seg.max_bytes == MAX_SEGMENT_BYTES == 64 << 20
    with pytest.raises(ValueError, match="segment limits"):
        Segmenter(target=2.0, max_duration=1.0)  # shorter than the target
    with pytest.raises(ValueError, match="segment limits"):
        Segmenter(target=2.0, max_bytes=0)


def test_one_keyframe_then_only_inter_frames_is_cut_at_the_maximum_duration() -> None:
    seg = Segmenter(target=2.0)
    seg.set_video_config(V)
    before = feed(seg, 6.1)  # a normal start: 0-2, 2-4 cut; 4-6 open, then 6.0 keyframe
    frames = [video(6100 + i * 33) for i in range(30 * 30)]  # 30 s of inter frames only
    out, exc, i = push_until_refused(seg, frames)
    assert exc.limit == "duration"
    assert exc.description == (
        "no keyframe for 20.0 s (a segment may last at most 20 s): "
        "set the encoder's keyframe interval to 2 s"
    )
    # refused as the segment (from the 6.0 s keyframe) passed 20 s of media time
    assert frames[i].dts - 6000 > 20_000 and frames[i - 1].dts - 6000 <= 20_000
    assert out == []
    # every later frame is refused too, a keyframe as well
    with pytest.raises(SegmentLimitError):
        seg.push(video(40_000, key=True))
    # the segments before are kept; the one that broke the limit is discarded
    kept = before + seg.flush()
    assert [s.sequence for s in kept] == [0, 1, 2]
    assert all(s.duration <= 2.1 for s in kept)
    assert seg.dropped_frames >= i


def test_a_long_keyframe_interval_within_the_limit_is_fine() -> None:
    seg = Segmenter(target=2.0)
    seg.set_video_config(V)
    seg.set_audio_config(A)
    out = feed(seg, 60.0, gop=10.0) + seg.flush()  # OBS' automatic interval at 25 fps
    assert [round(s.duration) for s in out] == [10] * 6
    assert seg.error is None


def test_a_normal_stream_never_trips_a_limit() -> None:
    seg = Segmenter(target=2.0)
    seg.set_video_config(V)
    seg.set_audio_config(A)
    out = feed(seg, 120.0) + seg.flush()
    assert len(out) == 60 and seg.error is None
    assert seg.dropped_frames == 1  # the audio frame at 0 ms, just before the first picture


def test_huge_frames_are_cut_at_the_maximum_size() -> None:
    seg = Segmenter(target=2.0, max_bytes=1 << 20)
    seg.set_video_config(V)
    big = b"x" * 300_000
    frames = [video(0, key=True, data=big)] + [video(33 * i, data=big) for i in range(1, 10)]
    out, exc, i = push_until_refused(seg, frames)
    assert exc.limit == "size" and i == 3  # 4 x 300 kB > 1 MiB
    assert exc.description.startswith("a segment grew past 1 MiB (1200000 bytes): ")
    assert "lower the bitrate" in exc.description and "keyframe interval to 2 s" in exc.description
    assert out == [] and seg.flush() == []


def test_frozen_timestamps_cannot_grow_a_segment_for_ever() -> None:
    """Media time does not advance, so only the size limit can stop it."""
    seg = Segmenter(target=2.0, max_bytes=100_000)
    seg.set_video_config(V)
    seg.set_audio_config(A)
    frames = [video(0, key=True)]
    for _ in range(20_000):
        frames += [video(0, data=b"v" * 10), audio(0, data=b"a" * 10)]
    _, exc, _ = push_until_refused(seg, frames)
    assert exc.limit == "size"


def test_audio_only_with_stuck_timestamps_is_cut_at_the_maximum_size() -> None:
    seg = Segmenter(target=2.0, max_bytes=50_000)
    seg.set_audio_config(A)
    _, exc, _ = push_until_refused(seg, [audio(1000, data=b"a" * 100) for _ in range(1000)])
    assert exc.limit == "size"


def test_audio_waiting_in_a_closing_segment_is_bounded_too() -> None:
    """A cut segment takes audio up to its keyframe's presentation time; audio whose
    clock stays before it must not grow that segment without end."""
    seg = Segmenter(target=2.0, max_bytes=50_000)
    seg.set_video_config(V)
    seg.set_audio_config(A)
    feed(seg, 2.1)  # the 2.0 s keyframe cut segment 0, now closing (waits for audio to 2.0 s)
    _, exc, _ = push_until_refused(seg, [audio(1990, data=b"a" * 100) for _ in range(1000)])
    assert exc.limit == "size"


def test_video_that_stops_while_audio_goes_on_is_cut_at_the_maximum_duration() -> None:
    seg = Segmenter(target=2.0)
    seg.set_video_config(V)
    seg.set_audio_config(A)
    before = feed(seg, 4.1)
    frames = [audio(4100 + j * 21) for j in range(30 * 48)]
    _, exc, _ = push_until_refused(seg, frames)
    assert exc.limit == "duration"
    assert [s.sequence for s in before + seg.flush()] == [0, 1]


def test_video_without_any_keyframe_is_refused_after_the_maximum_duration() -> None:
    seg = Segmenter(target=2.0)
    seg.set_video_config(V)
    seg.set_audio_config(A)
    frames: list[MediaFrame] = []
    for i in range(25 * 30):
        frames.append(video(i * 33))
        frames.append(audio(i * 33))
    out, exc, i = push_until_refused(seg, frames)
    assert exc.limit == "no_keyframe"
    assert exc.description == "no keyframe in the first 20.0 s: set the encoder's keyframe interval to 2 s"
    assert 19_900 <= frames[i].dts <= 20_100
    assert out == [] and seg.flush() == [] and seg.cut_count == 0


def test_video_without_a_sequence_header_is_refused() -> None:
    seg = Segmenter(target=2.0)
    _, exc, _ = push_until_refused(seg, [video(i * 33, key=i % 60 == 0) for i in range(25 * 30)])
    assert exc.limit == "no_keyframe"
    assert exc.description.startswith("no video configuration (AVC sequence header) in the first 20.0 s")


def test_metadata_announcing_video_that_never_comes_is_refused() -> None:
    seg = Segmenter(target=2.0)
    seg.set_audio_config(A)
    seg.expect_video = True  # onMetaData said videocodecid 7
    _, exc, _ = push_until_refused(seg, [audio(j * 21) for j in range(25 * 48)])
    assert exc.limit == "no_keyframe" and exc.description.startswith("no video in the first 20.0 s")


def test_a_late_first_keyframe_within_the_limit_starts_the_stream() -> None:
    seg = Segmenter(target=2.0)
    seg.set_video_config(V)
    for i in range(15 * 30):  # 15 s without a keyframe: dropped, not refused
        assert seg.push(video(i * 33)) == []
    out = feed(seg, 6.1, start_ms=15_000) + seg.flush()
    assert seg.error is None and [s.sequence for s in out] == [0, 1, 2, 3]


def test_a_keyframe_that_cuts_and_breaks_the_size_keeps_the_segment_it_cut() -> None:
    seg = Segmenter(target=2.0, max_bytes=1 << 20)
    seg.set_video_config(V)
    for i in range(61):
        seg.push(video(i * 33, key=i == 0))
    with pytest.raises(SegmentLimitError) as info:
        seg.push(video(2013, key=True, data=b"k" * (2 << 20)))  # cuts 0-2 s, itself too big
    assert info.value.limit == "size"
    kept = seg.flush()
    assert [s.sequence for s in kept] == [0] and len(kept[0].video) == 61
