"""Segment cutting: keyframe-aligned, target-driven, audio continuous, configs tracked."""

from __future__ import annotations

from tidecast.media.frames import AudioConfig, MediaFrame, TrackKind, VideoConfig
from tidecast.segmenter.core import MS, TIMELINE_OFFSET_S, VIDEO_TIMESCALE, Segmenter, SourceSegment

V = VideoConfig(b"\x01avcc", 1280, 720, "avc1.64001f")
V2 = VideoConfig(b"\x01avcc2", 1920, 1080, "avc1.640028")
A = AudioConfig(b"\x11\x90", 48000, 2, "mp4a.40.2")


def feed(seg: Segmenter, seconds: float, fps: int = 30, gop: float = 2.0, start_ms: int = 0) -> list[SourceSegment]:
    """Interleave video (keyframe every gop) and AAC frames as ffmpeg's FLV muxer does."""
    out: list[SourceSegment] = []
    events: list[tuple[int, MediaFrame]] = []
    n_video = round(seconds * fps)
    gop_frames = round(gop * fps)
    for i in range(n_video):
        ts = start_ms + round(i * 1000 / fps)
        events.append((ts, MediaFrame(TrackKind.VIDEO, ts, ts, b"v%d" % i, i % gop_frames == 0, 1.0)))
    n_audio = int(seconds * 48000 / 1024)
    for j in range(n_audio):
        ts = start_ms + (j * 1024 * 1000) // 48000
        events.append((ts, MediaFrame(TrackKind.AUDIO, ts, ts, b"a%d" % j, True, 1.0)))
    events.sort(key=lambda e: (e[0], e[1].kind is TrackKind.VIDEO))
    for _, f in events:
        out += seg.push(f)
    return out


def test_cuts_at_keyframes_near_target() -> None:
    seg = Segmenter(target=2.0, clock=lambda: 5.0)
    seg.set_video_config(V)
    seg.set_audio_config(A)
    out = feed(seg, 10.0) + seg.flush()
    assert [s.sequence for s in out] == [0, 1, 2, 3, 4]
    for s in out:
        assert s.video[0].keyframe
        assert abs(s.duration - 2.0) < 0.04
    # video timeline is continuous: each segment starts where the last ended
    for a, b in zip(out, out[1:], strict=False):
        assert a.video[-1].dts + a.video[-1].duration == b.video[0].dts
    # audio is sample-exact and continuous across segments
    audio = [x for s in out for x in s.audio]
    assert all(b.dts - a.dts == 1024 for a, b in zip(audio, audio[1:], strict=False))
    assert out[0].first_frame_arrival == 1.0 and out[0].completed_at == 5.0


def test_longer_gop_gives_longer_segments() -> None:
    seg = Segmenter(target=2.0)
    seg.set_video_config(V)
    seg.set_audio_config(A)
    out = feed(seg, 12.0, gop=4.0)
    assert [round(s.duration, 1) for s in out] == [4.0, 4.0]


def test_short_gop_is_grouped_up_to_the_target() -> None:
    seg = Segmenter(target=2.0)
    seg.set_video_config(V)
    out = feed(seg, 8.0, gop=0.5)
    assert all(abs(s.duration - 2.0) < 0.04 for s in out)


def test_video_before_first_keyframe_is_dropped_and_timestamps_kept() -> None:
    seg = Segmenter(target=2.0)
    seg.set_video_config(V)
    seg.push(MediaFrame(TrackKind.VIDEO, 10_000, 10_000, b"p", False))
    out = feed(seg, 4.1, start_ms=10_033) + seg.flush()
    assert seg.dropped_frames >= 1
    # source timestamps (plus the fixed timeline offset), not re-based
    assert out[0].video[0].dts == 10_033 * MS + TIMELINE_OFFSET_S * VIDEO_TIMESCALE
    assert out[0].start == 10.033 + TIMELINE_OFFSET_S


def test_config_change_starts_a_new_generation() -> None:
    seg = Segmenter(target=2.0)
    seg.set_video_config(V)
    first = feed(seg, 3.0)
    cut = seg.set_video_config(V2)
    assert len(first) == 1 and len(cut) == 1
    assert cut[0].config_generation == 0 and cut[0].video_config == V
    after = feed(seg, 4.1, start_ms=3000) + seg.flush()
    assert all(s.config_generation == 1 and s.video_config == V2 for s in after)


def test_audio_only_cuts_by_duration() -> None:
    seg = Segmenter(target=2.0)
    seg.set_audio_config(A)
    out: list[SourceSegment] = []
    for j in range(int(7 * 48000 / 1024)):
        ts = (j * 1024 * 1000) // 48000
        out += seg.push(MediaFrame(TrackKind.AUDIO, ts, ts, b"a", True))
    assert len(out) == 3
    assert all(abs(s.duration - 2.0) < 0.03 for s in out)


def test_audio_gap_resynchronises() -> None:
    seg = Segmenter(target=2.0)
    seg.set_audio_config(A)
    for j in range(10):
        ts = (j * 1024 * 1000) // 48000
        seg.push(MediaFrame(TrackKind.AUDIO, ts, ts, b"a", True))
    seg.push(MediaFrame(TrackKind.AUDIO, 5000, 5000, b"a", True))  # 5 s later: a real gap
    out = seg.flush()
    assert out[0].audio[-1].dts == (5000 + TIMELINE_OFFSET_S * 1000) * 48
