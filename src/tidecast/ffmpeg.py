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
from typing import Literal

from tidecast.media import stamp as clock_stamp

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
    # a machine-readable clock in every frame (``media.stamp``): "media" = the frame's
    # media time in ms (for a rendered source published later), "wall" = the wall
    # clock in ms when the frame is made (for a live test pattern); "" = none
    stamp: Literal["", "media", "wall"] = ""

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


def _stamp_cell_expr(constant: int, positions: tuple[int, ...]) -> str:
    """1 when the cell is white: the parity of ``constant`` plus those bits of the value
    (the frame's time in ms modulo 2^30, kept in variable 0)."""
    value = f"st(0,mod(floor(t*1000+0.5),{clock_stamp.MODULUS}))"
    terms = "+".join(f"mod(floor(ld(0)/{1 << k}),2)" for k in positions)
    return f"{value};mod({constant}+{terms},2)"


def stamp_filter(width: int, height: int, clock: Literal["media", "wall"], fps: int) -> str:
    """Filters drawing ``media.stamp``'s cells into ``width`` x ``height`` frames: the
    band black, then every cell that may be white as a filled white box switched on
    per frame by its ``enable`` expression (evaluated once a frame, not per pixel).

    For the "wall" clock the frames' timestamps are set to the wall clock in ms while
    the cells are drawn (``RTCTIME``, the same instant for every cell of a frame, so the
    check bits agree with the value), then back to frame counts."""
    x, y, w, h = clock_stamp.cell_box(0, width, height)
    chain = []
    if clock == "wall":
        chain += ["settb=1/1000", "setpts=floor(RTCTIME/1000)"]
    chain.append(f"drawbox=x=0:y=0:w={width}:h={h}:color=black:t=fill")
    for i, (constant, positions) in enumerate(clock_stamp.bit_terms()):
        if not positions and not constant:
            continue  # always black
        x, y, w, h = clock_stamp.cell_box(i, width, height)
        box = f"drawbox=x={x}:y={y}:w={w}:h={h}:color=white:t=fill"
        if positions:
            box += f":enable='{_stamp_cell_expr(constant, positions)}'"
        chain.append(box)
    if clock == "wall":
        chain += [f"settb=1/{fps}", "setpts=N"]
    return ",".join(chain)


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
    filters = []
    if p.stamp:
        filters.append(stamp_filter(p.width, p.height, p.stamp, p.fps))
    if p.clock:
        filters.append(_drawtext_clock(p.font, p.height))
    if filters:
        args += ["-vf", ",".join(filters)]
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


def publish_test_pattern_args(p: TestPattern, url: str, exe: str = "ffmpeg", ca_file: str = "") -> list[str]:
    """ffmpeg publishing a test pattern to an RTMP URL (``rtmps://``: the server's
    certificate is verified, against ``ca_file`` when given, e.g. a self-signed one)."""
    return [
        exe, "-hide_banner", "-nostdin", "-loglevel", "warning",
        *test_pattern_input_args(p),
        *h264_aac_output_args(p),
        "-f", "flv", *(["-ca_file", ca_file] if ca_file else []), url,
    ]  # fmt: skip


def render_test_pattern_args(
    p: TestPattern, path: str, exe: str = "ffmpeg", *, zerolatency: bool = False
) -> list[str]:
    """ffmpeg rendering a test pattern to a file (FLV/MP4 by extension), as fast as it can
    (``zerolatency``: without B-frames, as a live encoder tuned for latency sends it)."""
    fast = dataclasses.replace(p, realtime=False)
    return [
        exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        *test_pattern_input_args(fast),
        *h264_aac_output_args(fast, zerolatency=zerolatency),
        path,
    ]  # fmt: skip


def publish_file_args(
    path: str, url: str, exe: str = "ffmpeg", realtime: bool = True, loops: int = 0, *,
    like_a_camera: bool = False, progress: bool = False,
) -> list[str]:  # fmt: skip
    """ffmpeg re-publishing an already encoded file to RTMP without re-encoding
    (``loops`` more times after the first, timestamps running on).

    ``like_a_camera``: no initial burst (``-re`` alone sends the first 0.5 s at once,
    and ffmpeg 9 takes a burst of 0 for its default: hence 1 ms), so every frame
    leaves at publish start + its media time, as a live encoder sends it. ``progress``: ffmpeg writes ``key=value`` progress lines (``out_time_us``, what
    it has sent) to stdout every 0.1 s."""
    args = [exe, "-hide_banner", "-nostdin", "-loglevel", "warning"]
    if realtime:
        args += ["-re"]
        if like_a_camera:
            args += ["-readrate_initial_burst", "0.001"]
    if loops:
        args += ["-stream_loop", str(loops)]
    args += ["-i", path, "-c", "copy"]
    if progress:
        args += ["-progress", "pipe:1", "-stats_period", "0.1"]
    return [*args, "-f", "flv", url]


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


async def spawn(args: Sequence[str], name: str = "ffmpeg", *, stdout: bool = False) -> FFmpegProcess:
    """Start ffmpeg (never through a shell) with stderr captured (``stdout``: and its
    standard output readable at ``proc.proc.stdout``)."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE if stdout else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    log.debug("%s started (pid %d): %s", name, proc.pid, " ".join(args))
    return FFmpegProcess(proc, name)


async def spawn_piped(args: Sequence[str], name: str, pass_fds: Sequence[int]) -> FFmpegProcess:
    """Start ffmpeg reading its input from our pipe (``proc.proc.stdin``) and writing to
    the inherited descriptors ``pass_fds`` (its ``pipe:N`` outputs); stderr captured."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        pass_fds=tuple(pass_fds),
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


# Rungs are never upscaled, so every scale is a downscale (or a copy): swscale's
# area averaging is the filter made for that, and the cheapest that does not alias.
# Scaling a 1080p30 source to 720p, 480p and 240p took 0.25 of a core with bicubic,
# 0.10 with area (ffmpeg 9, one thread, 2-core machine), next to 0.12 for decoding it.
# Against lanczos at 720p, SSIM 0.9972 for area and 0.9995 for bicubic: no loss left
# to see once x264 has encoded the rung at its budget.
SCALE_FLAGS = "area"


def ladder_filter(outputs: Sequence[RungOutput]) -> str:
    """Decode once, split, scale to every rung: ``[v0]``, ``[v1]``... for the outputs."""
    n = len(outputs)
    chains = [f"[0:v]split={n}" + "".join(f"[s{i}]" for i in range(n))] if n > 1 else []
    for i, o in enumerate(outputs):
        src = f"[s{i}]" if n > 1 else "[0:v]"
        chains.append(f"{src}scale={o.width}:{o.height}:flags={SCALE_FLAGS},format=yuv420p[v{i}]")
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


@dataclass(frozen=True, slots=True)
class StreamRungOutput:
    """One rendition of a streaming transcode: size, bitrate, the pipe ffmpeg writes it to
    (``pipe:N``), and the first presentation time it encodes (``from_pts``, in the
    source's 90 kHz ticks; None: from the first frame)."""

    width: int
    height: int
    video_kbps: int
    profile: str
    target: str
    from_pts: int | None = None


def stream_ladder_filter(outputs: Sequence[StreamRungOutput]) -> str:
    """Like ``ladder_filter``, with frames before an output's ``from_pts`` dropped after
    decoding (they are still decoded: the references of the frames after them)."""
    n = len(outputs)
    chains = [f"[0:v]split={n}" + "".join(f"[s{i}]" for i in range(n))] if n > 1 else []
    for i, o in enumerate(outputs):
        src = f"[s{i}]" if n > 1 else "[0:v]"
        select = f"select=gte(pts\\,{o.from_pts})," if o.from_pts is not None else ""
        chains.append(f"{src}{select}scale={o.width}:{o.height}:flags={SCALE_FLAGS},format=yuv420p[v{i}]")
    return ";".join(chains)


def transcode_stream_args(
    outputs: Sequence[StreamRungOutput], preset: str, *, exe: str = "ffmpeg"
) -> list[str]:
    """ONE ffmpeg per source segment, fed progressively: fragmented MP4 (the source's
    init segment, then its parts as they are cut) on stdin, each rendition as FLV on
    its own pipe, every encoded frame written the moment it is encoded.

    Why each option (measured on the default ladder from a 1080p30 source, parts of
    1/3 s fed in real time, on 2 cores): every frame of a part is out 0.17-0.23 s after
    the part went in (the first part 0.22-0.33 s), and nothing waits for the next part:

    - ``-threads 1`` on the decoder: a frame-threaded decoder holds its last frames
      until more input comes (each part's last frames came out only with the next part,
      0.37-0.42 s);
    - x264 ``-tune zerolatency``: no B-frames (every rendition part is a run of frames
      in presentation order, so the part rule cuts it without reordering), no
      lookahead, no frame threads (sliced threads instead); x264's defaults hold
      0.6-1.0 s of frames, ``-bf 0 -rc-lookahead 0`` alone still one part;
    - FLV out, ``-flush_packets 1``: the FLV muxer writes a packet as it gets it, where
      the fragmented MP4 muxer (even ``frag_every_frame``) writes a frame only once the
      next one arrives, a part late. FLV carries the avcC and AVCC frames we re-mux into
      CMAF ourselves (``media.fmp4``) on the source's own timeline; its millisecond
      timestamps are exact for sources that came in over RTMP (milliseconds too);
    - ``-copyts`` and ``-enc_time_base demux``: frames keep the source's presentation
      times (by default the encoder rounds them to 1/frame rate), so ``from_pts``
      selects in source ticks and every output frame maps back to its source frame;
    - ``-probesize 32 -analyzeduration 0``: start on the first part, not after 5 s.

    The encoder's parameter sets do not depend on where it starts or how fast input
    comes, so an encode resumed mid-segment (``from_pts``) shares the init segment.
    """
    args = [
        exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-threads", "1", "-probesize", "32", "-analyzeduration", "0", "-copyts",
        "-f", "mp4", "-i", "pipe:0", "-filter_complex", stream_ladder_filter(outputs),
    ]  # fmt: skip
    for i, o in enumerate(outputs):
        rung = RungOutput(o.width, o.height, o.video_kbps, o.profile, o.target)
        args += [
            "-map", f"[v{i}]", *x264_cbr_args(rung, preset), "-tune", "zerolatency",
            "-force_key_frames", "expr:eq(n,0)", "-g", "100000", "-sc_threshold", "0",
            "-fps_mode", "passthrough", "-enc_time_base", "demux", "-flush_packets", "1",
            "-f", "flv", o.target,
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
