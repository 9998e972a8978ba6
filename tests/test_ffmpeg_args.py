"""ffmpeg command lines are pure functions: exact argument lists per profile."""

from __future__ import annotations

from tidecast import ffmpeg


def test_transcode_segment_two_rungs() -> None:
    outs = [
        ffmpeg.RungOutput(1280, 720, 3500, "main", "/t/720p.mp4"),
        ffmpeg.RungOutput(426, 240, 400, "baseline", "/t/240p.mp4"),
    ]
    assert ffmpeg.transcode_segment_args("/t/src.mp4", outs, "veryfast", exe="ff") == [
        "ff", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", "/t/src.mp4",
        "-filter_complex",
        "[0:v]split=2[s0][s1];[s0]scale=1280:720:flags=area,format=yuv420p[v0];"
        "[s1]scale=426:240:flags=area,format=yuv420p[v1]",
        "-map", "[v0]", "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "main",
        "-b:v", "3500k", "-minrate", "3500k", "-maxrate", "3500k", "-bufsize", "3500k",
        "-x264-params", "nal-hrd=cbr", "-force_key_frames", "expr:eq(n,0)", "-g", "100000",
        "-sc_threshold", "0", "-fps_mode", "passthrough",
        "-f", "mp4", "-movflags", "+frag_keyframe+empty_moov+default_base_moof+skip_trailer",
        "-use_editlist", "0", "-video_track_timescale", "90000", "/t/720p.mp4",
        "-map", "[v1]", "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "baseline",
        "-b:v", "400k", "-minrate", "400k", "-maxrate", "400k", "-bufsize", "400k",
        "-x264-params", "nal-hrd=cbr", "-force_key_frames", "expr:eq(n,0)", "-g", "100000",
        "-sc_threshold", "0", "-fps_mode", "passthrough",
        "-f", "mp4", "-movflags", "+frag_keyframe+empty_moov+default_base_moof+skip_trailer",
        "-use_editlist", "0", "-video_track_timescale", "90000", "/t/240p.mp4",
    ]  # fmt: skip


def test_transcode_segment_single_rung_needs_no_split() -> None:
    args = ffmpeg.transcode_segment_args("s.mp4", [ffmpeg.RungOutput(854, 480, 1200, "main", "o.mp4")], "fast", exe="ff")
    assert args[args.index("-filter_complex") + 1] == "[0:v]scale=854:480:flags=area,format=yuv420p[v0]"
    assert args[args.index("-preset") + 1] == "fast"


def test_publish_test_pattern() -> None:
    p = ffmpeg.TestPattern(width=640, height=360, fps=25, gop_seconds=2, duration=5, clock=False, video_bitrate_k=800)
    assert ffmpeg.publish_test_pattern_args(p, "rtmp://h/live/k", "ff") == [
        "ff", "-hide_banner", "-nostdin", "-loglevel", "warning",
        "-re", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25:duration=5",
        "-re", "-f", "lavfi", "-i", "sine=frequency=440:beep_factor=4:sample_rate=48000:duration=5",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
        "-b:v", "800k", "-maxrate", "800k", "-bufsize", "1600k",
        "-g", "50", "-keyint_min", "50", "-sc_threshold", "0", "-tune", "zerolatency",
        "-c:a", "aac", "-b:a", "128k", "-ar", "48000", "-ac", "2",
        "-f", "flv", "rtmp://h/live/k",
    ]  # fmt: skip
    tls = ffmpeg.publish_test_pattern_args(p, "rtmps://h/live/k", "ff", ca_file="/tls/cert.pem")
    assert tls[-5:] == ["-f", "flv", "-ca_file", "/tls/cert.pem", "rtmps://h/live/k"]


def test_clock_overlay_is_burnt_in_when_asked() -> None:
    p = ffmpeg.TestPattern(duration=1, font="/f.ttf")
    args = ffmpeg.test_pattern_input_args(p)
    vf = args[args.index("-vf") + 1]
    assert vf.startswith("drawtext=fontfile=/f.ttf:") and "localtime" in vf


async def test_a_hung_ffmpeg_is_killed_after_its_timeout() -> None:
    import time

    exe = ffmpeg.ffmpeg_exe()
    # an endless real-time source: never finishes on its own
    args = [exe, "-hide_banner", "-nostdin", "-re", "-f", "lavfi", "-i", "testsrc2=size=64x64:rate=10",
            "-f", "null", "-"]  # fmt: skip
    t0 = time.monotonic()
    proc = await ffmpeg.spawn(args, "hang")
    try:
        await proc.wait(timeout=1.0)
    except ffmpeg.FFmpegError as exc:
        assert "hung" in str(exc)
    else:
        raise AssertionError("a hung ffmpeg was not reported")
    assert proc.proc.returncode is not None  # it is gone, not orphaned
    assert time.monotonic() - t0 < 6


async def test_ffmpeg_failure_reports_its_stderr() -> None:
    import pytest

    with pytest.raises(ffmpeg.FFmpegError, match="exited with"):
        await ffmpeg.run([ffmpeg.ffmpeg_exe(), "-hide_banner", "-i", "/nonexistent/input.mp4", "-f", "null", "-"], 10)


def test_publish_file_args() -> None:
    assert ffmpeg.publish_file_args("in.mp4", "rtmp://h/live/k", "ff") == [
        "ff", "-hide_banner", "-nostdin", "-loglevel", "warning", "-re",
        "-i", "in.mp4", "-c", "copy", "-f", "flv", "rtmp://h/live/k",
    ]  # fmt: skip
    assert ffmpeg.publish_file_args("in.mp4", "rtmp://h/live/k", "ff", realtime=False, loops=2) == [
        "ff", "-hide_banner", "-nostdin", "-loglevel", "warning", "-stream_loop", "2",
        "-i", "in.mp4", "-c", "copy", "-f", "flv", "rtmp://h/live/k",
    ]  # fmt: skip
    assert ffmpeg.publish_file_args("in.flv", "rtmp://h/live/k", "ff", like_a_camera=True, progress=True) == [
        "ff", "-hide_banner", "-nostdin", "-loglevel", "warning", "-re", "-readrate_initial_burst", "0.001",
        "-i", "in.flv", "-c", "copy", "-progress", "pipe:1", "-stats_period", "0.1",
        "-f", "flv", "rtmp://h/live/k",
    ]  # fmt: skip


def test_transcode_stream_args() -> None:
    outs = [
        ffmpeg.StreamRungOutput(1280, 720, 3500, "main", "pipe:7"),
        ffmpeg.StreamRungOutput(426, 240, 400, "baseline", "pipe:9", from_pts=1_091_700),
    ]
    assert ffmpeg.transcode_stream_args(outs, "veryfast", exe="ff") == [
        "ff", "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-threads", "1", "-probesize", "32", "-analyzeduration", "0", "-copyts",
        "-f", "mp4", "-i", "pipe:0",
        "-filter_complex",
        "[0:v]split=2[s0][s1];[s0]scale=1280:720:flags=area,format=yuv420p[v0];"
        "[s1]select=gte(pts\\,1091700),scale=426:240:flags=area,format=yuv420p[v1]",
        "-map", "[v0]", "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "main",
        "-b:v", "3500k", "-minrate", "3500k", "-maxrate", "3500k", "-bufsize", "3500k",
        "-x264-params", "nal-hrd=cbr", "-tune", "zerolatency",
        "-force_key_frames", "expr:eq(n,0)", "-g", "100000", "-sc_threshold", "0",
        "-fps_mode", "passthrough", "-enc_time_base", "demux", "-flush_packets", "1",
        "-f", "flv", "pipe:7",
        "-map", "[v1]", "-c:v", "libx264", "-preset", "veryfast", "-profile:v", "baseline",
        "-b:v", "400k", "-minrate", "400k", "-maxrate", "400k", "-bufsize", "400k",
        "-x264-params", "nal-hrd=cbr", "-tune", "zerolatency",
        "-force_key_frames", "expr:eq(n,0)", "-g", "100000", "-sc_threshold", "0",
        "-fps_mode", "passthrough", "-enc_time_base", "demux", "-flush_packets", "1",
        "-f", "flv", "pipe:9",
    ]  # fmt: skip


def test_transcode_stream_single_rung_from_a_boundary() -> None:
    args = ffmpeg.transcode_stream_args(
        [ffmpeg.StreamRungOutput(854, 480, 1200, "main", "pipe:5", from_pts=90)], "fast", exe="ff"
    )
    graph = args[args.index("-filter_complex") + 1]
    assert graph == "[0:v]select=gte(pts\\,90),scale=854:480:flags=area,format=yuv420p[v0]"
