"""The one place that builds ffmpeg command lines, and runs them safely.

Command builders are pure functions returning argument lists (tested by exact
lists). ``run`` / ``spawn`` start ffmpeg without a shell, capture and log its
stderr, check exit codes, and kill a process that hangs or outlives its owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tidecast.ffmpeg")

CLOCK_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf",
)


class FFmpegError(RuntimeError):
    """ffmpeg failed, could not be found, or hung."""


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: $TIDECAST_FFMPEG, the imageio-ffmpeg wheel's, or PATH's."""
    explicit = os.environ.get("TIDECAST_FFMPEG")
    if explicit:
        return explicit
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError) as exc:
        found = shutil.which("ffmpeg")
        if found:
            return found
        raise FFmpegError("no ffmpeg found: install imageio-ffmpeg or set TIDECAST_FFMPEG") from exc


def clock_font() -> str | None:
    for path in CLOCK_FONT_CANDIDATES:
        if Path(path).is_file():
            return path
    return None


@dataclass(frozen=True, slots=True)
class TestPattern:
    """A generated source: moving test pattern, a tone, and a burnt-in wall clock."""

    width: int = 1280
    height: int = 720
    fps: int = 30
    gop_seconds: float = 2.0
    video_bitrate_k: int = 2500
    audio_rate: int = 48000
    duration: float | None = None  # seconds; None = until stopped
    clock: bool = True
    realtime: bool = True  # read input at native rate (-re), like a live camera
    preset: str = "veryfast"
    font: str | None = None

    @property
    def gop_frames(self) -> int:
        return max(1, round(self.fps * self.gop_seconds))


def _drawtext_clock(font: str | None, height: int) -> str:
    size = max(16, height // 14)
    fontspec = f"fontfile={font}:" if font else ""
    # %{localtime} is the wall clock when the frame was generated (capture time).
    return (
        f"drawtext={fontspec}text='%{{localtime\\:%H\\\\\\:%M\\\\\\:%S}}.%{{eif\\:mod(t*1000\\,1000)\\:d\\:3}}"
        f"  t=%{{pts\\:hms}}':x=(w-tw)/2:y=h-th-{size}:fontsize={size}:fontcolor=white"
        ":box=1:boxcolor=black@0.6:boxborderw=8"
    )


def test_pattern_input_args(p: TestPattern) -> list[str]:
    """lavfi inputs and filters for a test pattern (no output options)."""
    args: list[str] = []
    if p.realtime:
        args += ["-re"]
    vsrc = f"testsrc2=size={p.width}x{p.height}:rate={p.fps}"
    if p.duration is not None:
        vsrc += f":duration={p.duration:g}"
    args += ["-f", "lavfi", "-i", vsrc]
    if p.realtime:
        args += ["-re"]
    asrc = f"sine=frequency=440:beep_factor=4:sample_rate={p.audio_rate}"
    if p.duration is not None:
        asrc += f":duration={p.duration:g}"
    args += ["-f", "lavfi", "-i", asrc]
    if p.clock:
        args += ["-vf", _drawtext_clock(p.font, p.height)]
    return args


def h264_aac_output_args(p: TestPattern, *, zerolatency: bool = True) -> list[str]:
    """x264 + AAC encode with a fixed GOP (keyframe every gop_seconds, no scene cuts)."""
    args = [
        "-c:v", "libx264",
        "-preset", p.preset,
        "-pix_fmt", "yuv420p",
        "-b:v", f"{p.video_bitrate_k}k",
        "-maxrate", f"{p.video_bitrate_k}k",
        "-bufsize", f"{p.video_bitrate_k * 2}k",
        "-g", str(p.gop_frames),
        "-keyint_min", str(p.gop_frames),
        "-sc_threshold", "0",
    ]
    if zerolatency:
        args += ["-tune", "zerolatency"]
    args += ["-c:a", "aac", "-b:a", "128k", "-ar", str(p.audio_rate), "-ac", "2"]
    return args


def publish_test_pattern_args(p: TestPattern, url: str, exe: str = "ffmpeg") -> list[str]:
    """ffmpeg publishing a test pattern to an RTMP URL."""
    return [
        exe, "-hide_banner", "-nostdin", "-loglevel", "warning",
        *test_pattern_input_args(p),
        *h264_aac_output_args(p),
        "-f", "flv", url,
    ]  # fmt: skip


def render_test_pattern_args(p: TestPattern, path: str, exe: str = "ffmpeg") -> list[str]:
    """ffmpeg rendering a test pattern to a file (FLV/MP4 by extension), as fast as it can."""
    fast = dataclasses.replace(p, realtime=False)
    return [
        exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        *test_pattern_input_args(fast),
        *h264_aac_output_args(fast, zerolatency=False),
        path,
    ]  # fmt: skip


def publish_file_args(
    path: str, url: str, exe: str = "ffmpeg", realtime: bool = True, loops: int = 0
) -> list[str]:
    """ffmpeg re-publishing an already encoded file to RTMP without re-encoding
    (``loops`` more times after the first, timestamps running on)."""
    args = [exe, "-hide_banner", "-nostdin", "-loglevel", "warning"]
    if realtime:
        args += ["-re"]
    if loops:
        args += ["-stream_loop", str(loops)]
    return [*args, "-i", path, "-c", "copy", "-f", "flv", url]


# ---------------------------------------------------------------- running


async def _pump_stderr(stream: asyncio.StreamReader | None, name: str, keep: list[str]) -> None:
    if stream is None:
        return
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip()
        if text:
            keep.append(text)
            del keep[:-50]
            log.info("%s: %s", name, text)


class FFmpegProcess:
    """A running ffmpeg: stderr logged line by line, stopped with SIGTERM then SIGKILL."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.stderr_tail: list[str] = []
        self._pump = asyncio.create_task(_pump_stderr(proc.stderr, name, self.stderr_tail))

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait(self, timeout: float | None = None) -> int:
        try:
            rc = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.stop()
            raise FFmpegError(f"{self.name} hung for more than {timeout:g} s and was killed") from None
        await self._pump
        return rc

    async def stop(self, grace: float = 3.0) -> int:
        """Ask ffmpeg to finish (SIGTERM lets it flush), kill it if it does not."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                log.warning("%s did not stop within %.1f s; killing it", self.name, grace)
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        assert self.proc.returncode is not None
        return self.proc.returncode


async def spawn(args: Sequence[str], name: str = "ffmpeg") -> FFmpegProcess:
    """Start ffmpeg (never through a shell) with stderr captured."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    log.debug("%s started (pid %d): %s", name, proc.pid, " ".join(args))
    return FFmpegProcess(proc, name)


async def run(args: Sequence[str], timeout: float, name: str = "ffmpeg") -> None:
    """Run ffmpeg to completion; FFmpegError with its last stderr lines on failure or hang."""
    proc = await spawn(args, name)
    rc = await proc.wait(timeout)
    if rc != 0:
        tail = "\n".join(proc.stderr_tail[-10:])
        raise FFmpegError(f"{name} exited with {rc}:\n{tail}")


def publish_tee_args(p: TestPattern, urls: Sequence[str], exe: str = "ffmpeg") -> list[str]:
    """One encode published to several RTMP URLs at once (ffmpeg's tee muxer)."""
    targets = "|".join(f"[f=flv:onfail=abort]{u}" for u in urls)
    return [
        exe, "-hide_banner", "-nostdin", "-loglevel", "warning",
        *test_pattern_input_args(p),
        *h264_aac_output_args(p),
        "-map", "0:v", "-map", "1:a", "-flags", "+global_header",
        "-f", "tee", targets,
    ]  # fmt: skip


def hls_baseline_server_args(listen_url: str, playlist: str, target: float, exe: str = "ffmpeg") -> list[str]:
    """ffmpeg as RTMP server remuxing to its own fMP4 HLS: the latency baseline."""
    return [
        exe, "-hide_banner", "-nostdin", "-loglevel", "warning",
        "-listen", "1", "-i", listen_url,
        "-c", "copy", "-f", "hls", "-hls_time", f"{target:g}", "-hls_list_size", "10",
        "-hls_segment_type", "fmp4", "-hls_flags", "independent_segments+temp_file",
        playlist,
    ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class RungOutput:
    """One rendition of a transcode: size, x264 settings and where ffmpeg writes it."""

    width: int
    height: int
    video_kbps: int
    profile: str
    path: str


def ladder_filter(outputs: Sequence[RungOutput]) -> str:
    """Decode once, split, scale to every rung: ``[v0]``, ``[v1]``... for the outputs."""
    n = len(outputs)
    chains = [f"[0:v]split={n}" + "".join(f"[s{i}]" for i in range(n))] if n > 1 else []
    for i, o in enumerate(outputs):
        src = f"[s{i}]" if n > 1 else "[0:v]"
        chains.append(f"{src}scale={o.width}:{o.height}:flags=bicubic,format=yuv420p[v{i}]")
    return ";".join(chains)


def x264_cbr_args(o: RungOutput, preset: str) -> list[str]:
    """x264 at a constant bitrate with filler (nal-hrd cbr): the rung's exact budget."""
    k = f"{o.video_kbps}k"
    return [
        "-c:v", "libx264", "-preset", preset, "-profile:v", o.profile,
        "-b:v", k, "-minrate", k, "-maxrate", k, "-bufsize", k, "-x264-params", "nal-hrd=cbr",
    ]  # fmt: skip


def transcode_segment_args(
    source: str, outputs: Sequence[RungOutput], preset: str, *, exe: str = "ffmpeg",
    threads: int = 0,
) -> list[str]:  # fmt: skip
    """ONE ffmpeg per source segment: decode once, scale and encode every rung.

    Each output is a video-only fragmented MP4 with a single fragment: one IDR
    on the first frame (the source segment starts at a keyframe, so every
    rendition's segment N starts at the same instant), constant bitrate with
    filler (x264 nal-hrd cbr), source frame timing kept (passthrough). Audio is
    not re-encoded: the source audio is one rendition shared by every video
    rendition. Timestamps are re-stamped afterwards by the project (ffmpeg's mp4
    muxer re-bases them to 0), hence no edit lists.
    """
    args = [
        exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-i", source, "-filter_complex", ladder_filter(outputs),
    ]  # fmt: skip
    for i, o in enumerate(outputs):
        args += [
            "-map", f"[v{i}]", *x264_cbr_args(o, preset),
            "-force_key_frames", "expr:eq(n,0)", "-g", "100000", "-sc_threshold", "0",
            "-fps_mode", "passthrough",
        ]  # fmt: skip
        if threads:
            args += ["-threads", str(threads)]
        args += [
            "-f", "mp4", "-movflags", "+frag_keyframe+empty_moov+default_base_moof+skip_trailer",
            "-use_editlist", "0", "-video_track_timescale", "90000",
            o.path,
        ]  # fmt: skip
    return args


def transcode_continuous_args(
    source: str, outputs: Sequence[RungOutput], preset: str, gop_frames: int, exe: str = "ffmpeg"
) -> list[str]:
    """The benchmark baseline: one continuous ffmpeg encoding the same ladder."""
    args = [exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", source,
            "-filter_complex", ladder_filter(outputs)]  # fmt: skip
    for i, o in enumerate(outputs):
        args += [
            "-map", f"[v{i}]", *x264_cbr_args(o, preset),
            "-g", str(gop_frames), "-keyint_min", str(gop_frames), "-sc_threshold", "0",
            "-fps_mode", "passthrough",
            "-f", "mp4", "-movflags", "+frag_keyframe+empty_moov+default_base_moof",
            o.path,
        ]  # fmt: skip
    return args


def poster_args(source: str, out: str, width: int = 640, exe: str = "ffmpeg") -> list[str]:
    """One JPEG frame (the first picture of a segment) as a poster thumbnail."""
    return [exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", source,
            "-frames:v", "1", "-vf", f"scale={width}:-2", "-q:v", "4", out]  # fmt: skip


def remux_mp4_args(video_list: str, audio_list: str | None, out: str, exe: str = "ffmpeg") -> list[str]:
    """Recorded CMAF pieces (ffmpeg concat lists) -> one progressive MP4, no re-encoding."""
    args = [exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "concat", "-safe", "0", "-i", video_list]  # fmt: skip
    if audio_list:
        args += ["-f", "concat", "-safe", "0", "-i", audio_list, "-map", "0:v:0", "-map", "1:a:0"]
    return [*args, "-c", "copy", "-movflags", "+faststart", out]
