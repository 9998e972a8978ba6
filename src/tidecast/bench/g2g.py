"""``tidecast bench g2g``: glass to glass, from the publisher's frame to the picture on
screen in headless Chromium, through the nginx edge.

The sources are encoded once, in advance: the test pattern with ``media.stamp``'s
machine-readable clock carrying each frame's media time in ms (720p30 and 1080p30,
x264 zerolatency, GOP = segment target; a 1080p x264 publisher encoding live on 2
cores next to the ladder and Chromium falls behind real time). Then, per
configuration, on 127.0.0.1 with their own data directory and ports:

- ``tidecast serve`` (a subprocess, configured through ``TIDECAST_*`` as users do);
- nginx running the config ``tidecast edge-config`` writes, in front of it;
- ffmpeg publishing the source with ``-re -c copy`` and no initial burst, so frame
  ``t`` leaves at publish start + ``t``, like a camera's. The publish start is
  measured from ffmpeg's own progress reports (what it has sent, every 0.1 s): the
  earliest ``arrival - out_time`` of them;
- Chromium (Playwright, Debian's /usr/bin/chromium) on the watch page through the
  edge. ``web/stamp.js`` reads the stamp of every presented frame
  (``requestVideoFrameCallback``, the band drawn into a canvas), and
  ``g2g = expected display time - (publish start + stamp)``, all on this machine's
  one clock.

After a warm-up (the player settles on its rendition and latency), for
``--seconds``: g2g p50 / p95 / max over every frame shown, the rendition shown,
stalls (``waiting`` events and hls.js buffer-stall errors), dropped frames
(``getVideoPlaybackQuality``), hls.js's own latency estimate and target, and whether
lag grows (the slope of g2g over time, first against last minute).

Configurations, in one run: LL-HLS passthrough, LL-HLS with the default ladder from
720p30 and from 1080p30, and standard HLS with the default ladder from 720p30 as
the baseline; a table, then one summary line with ratios against the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import pwd
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tidecast import ffmpeg
from tidecast.bench.processes import (
    CLK_TCK,
    BenchError,
    Child,
    free_port,
    nginx_exe,
    process_tree,
    run_interruptibly,
    wait_http,
)
from tidecast.edge.nginx import EdgeConfig, render

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip
SEGMENT_TARGET = 2.0
STREAM = "g2g"
SOURCE_VERSION = 1  # part of a cached source's name: bump when the rendering changes


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    width: int
    height: int
    kbps: int
    fps: int = 30


SOURCES = {
    "720p30": Source("720p30", 1280, 720, 3500),
    "1080p30": Source("1080p30", 1920, 1080, 6000),
}


@dataclass(frozen=True, slots=True)
class Configuration:
    key: str
    label: str
    ll_hls: bool
    ladder: str  # TIDECAST_LADDER
    source: str
    target_p95: float | None  # seconds (the issue's), None for the baseline


CONFIGURATIONS = (
    Configuration("ll-pass", "LL passthrough, 720p30", True, "none", "720p30", 1.5),
    Configuration("ll-720", "LL ladder from 720p30", True, "default", "720p30", 2.5),
    Configuration("ll-1080", "LL ladder from 1080p30", True, "default", "1080p30", 3.5),
    Configuration("hls-720", "HLS ladder from 720p30 (baseline)", False, "default", "720p30", None),
)
BASELINE = "hls-720"


@dataclass
class Result:
    config: Configuration
    g2g: list[tuple[float, float]] = field(default_factory=list)  # (seconds into window, g2g s)
    heights: list[int] = field(default_factory=list)
    unreadable: int = 0
    stalls: int = 0
    stall_ms: int = 0
    live_jumps: int = 0  # the player jumped back to the live position (pushed far behind)
    buffer_stalls: int = 0
    dropped: int = 0
    decoded: int = 0
    hls_latency: list[float] = field(default_factory=list)
    target_latency: list[float] = field(default_factory=list)
    start_offset: float = 0.0  # publisher: first frame sent, seconds after it was started
    ours_cores: float = 0.0  # CPU of this bench and everything it started, in cores
    serve_cores: float = 0.0  # of which tidecast serve (ingest, workers and their ffmpeg, origin)
    foreign_cores: float = 0.0  # CPU of every other process on the machine, in cores
    errors: list[str] = field(default_factory=list)
    watched: str = ""  # the rendition whose parts were watched at the origin
    listed: list[float] = field(
        default_factory=list
    )  # part listed at the origin, s after its end was sent

    def values(self) -> list[float]:
        return [g for _, g in self.g2g]


def percentile(values: Sequence[float], q: float) -> float:
    v = sorted(values)
    if not v:
        return math.nan
    return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of g2g over time, seconds of g2g per minute."""
    if len(points) < 2:
        return math.nan
    mt = statistics.fmean(t for t, _ in points)
    mg = statistics.fmean(g for _, g in points)
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return math.nan
    return 60 * sum((t - mt) * (g - mg) for t, g in points) / var


def first_last(points: Sequence[tuple[float, float]], span: float) -> tuple[float, float]:
    """Mean g2g over the first and the last ``span`` seconds of the window."""
    if not points:
        return math.nan, math.nan
    end = points[-1][0]
    first = [g for t, g in points if t <= span]
    last = [g for t, g in points if t >= end - span]
    return statistics.fmean(first), statistics.fmean(last)


def rendition_shares(heights: Sequence[int]) -> str:
    if not heights:
        return "-"
    counts: dict[int, int] = {}
    for h in heights:
        counts[h] = counts.get(h, 0) + 1
    order = sorted(counts.items(), key=lambda kv: -kv[1])
    return " ".join(f"{h}p:{100 * n / len(heights):.0f}%" for h, n in order)


# ---------------------------------------------------------------- the parts


def treecpu_seconds(pid: int) -> float:
    """CPU time of a process tree so far, its reaped children's included (the
    transcode's ffmpeg processes come and go; what they used goes to their parent)."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time the machine's cores have spent busy so far (all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


async def make_source(src: Source, seconds: float, where: Path) -> Path:
    """The stamped source, rendered once (kept in ``where`` for later runs)."""
    path = where / f"g2g-{src.name}-{seconds:.0f}s-{src.kbps}k-v{SOURCE_VERSION}.flv"
    if path.exists():
        print(f"source {src.name}: reusing {path}", flush=True)
        return path
    pattern = ffmpeg.TestPattern(
        width=src.width, height=src.height, fps=src.fps, gop_seconds=SEGMENT_TARGET,
        video_bitrate_k=src.kbps, duration=seconds, stamp="media", font=ffmpeg.clock_font(),
    )  # fmt: skip
    tmp = path.with_suffix(".part.flv")
    print(
        f"source {src.name}: encoding {seconds:.0f} s of the stamped test pattern once ...",
        flush=True,
    )
    started = time.monotonic()
    await ffmpeg.run(ffmpeg.render_test_pattern_args(pattern, str(tmp), ffmpeg.ffmpeg_exe(), zerolatency=True),
                     timeout=max(600, 20 * seconds), name=f"render {src.name}")  # fmt: skip
    tmp.rename(path)
    print(f"source {src.name}: {time.monotonic() - started:.0f} s", flush=True)
    return path


def serve_env(cfg: Configuration, data_dir: Path, http_port: int, rtmp_port: int,
              part_target: float | None) -> dict[str, str]:  # fmt: skip
    """This environment without the shell's TIDECAST_* settings (but the ffmpeg choice),
    then the configuration's."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TIDECAST_") or k == "TIDECAST_FFMPEG"
    }
    env.update(
        PYTHONUNBUFFERED="1", TIDECAST_HOST="127.0.0.1", TIDECAST_HTTP_PORT=str(http_port),
        TIDECAST_RTMP_PORT=str(rtmp_port), TIDECAST_DATA_DIR=str(data_dir),
        TIDECAST_LL_HLS="1" if cfg.ll_hls else "0", TIDECAST_LADDER=cfg.ladder,
        TIDECAST_SEGMENT_TARGET=f"{SEGMENT_TARGET:g}",
    )  # fmt: skip
    if part_target is not None:
        env["TIDECAST_PART_TARGET"] = f"{part_target:g}"
    return env


def edge_conf(prefix: Path, origin_port: int, port: int) -> Path:
    """nginx.conf as ``tidecast edge-config`` writes it, in ``prefix``."""
    (prefix / "cache").mkdir(parents=True)
    conf = prefix / "nginx.conf"
    conf.write_text(render(EdgeConfig(
        origins=[f"127.0.0.1:{origin_port}"], listen=f"127.0.0.1:{port}", cache_dir=str(prefix / "cache"),
        segment_target=SEGMENT_TARGET, pid_file=str(prefix / "nginx.pid"), error_log=str(prefix / "error.log"),
        worker_processes="1", user=pwd.getpwuid(os.getuid()).pw_name,
    )))  # fmt: skip
    return conf


class Progress:
    """ffmpeg's progress lines: when it had sent what. ``start`` = the earliest
    ``arrival - out_time``: the wall-clock time of media time 0."""

    def __init__(self) -> None:
        self.start = math.inf
        self.reports = 0

    async def read(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while line := await stream.readline():
            now = time.time()
            key, _, value = line.decode(errors="replace").strip().partition("=")
            if key == "out_time_us" and value.isdigit() and int(value) > 0:
                self.reports += 1
                self.start = min(self.start, now - int(value) / 1e6)


PART_URI = re.compile(r'#EXT-X-PART:DURATION=([\d.]+),URI="[^"]*?(\d{6,})\.(\d+)\.m4s"')
SEGMENT_URI = re.compile(r"#EXTINF:([\d.]+),[^\n]*\n(?:#[^\n]*\n)*[^#\n]*?(\d{6,})\.m4s")


async def rendition_url(origin: str, height: int) -> tuple[str, str]:
    """(name, media playlist URL at the origin) of the rendition ``height`` high
    (the first listed, the top, if none is)."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{origin}/hls/{STREAM}/master.m3u8")).text
    variants = re.findall(r"#EXT-X-STREAM-INF:([^\n]*)\n([^#\n][^\n]*)", text)
    if not variants:
        raise BenchError(f"no variant in the master playlist:\n{text}")

    def tall(attrs: str) -> int:
        m = re.search(r"RESOLUTION=\d+x(\d+)", attrs)
        return int(m.group(1)) if m else 0

    uri = next((u for a, u in variants if tall(a) == height), variants[0][1])
    return uri.removesuffix(".m3u8"), f"{origin}/hls/{STREAM}/{uri}"


class PartWatcher:
    """Follows one rendition's playlist at the origin as a player does (LL: blocking
    reloads for the next part; otherwise a reload every 50 ms) and records how long
    after its last frame left the publisher each part (LL) or segment was listed: the
    server's share of glass to glass. Media times: segment ``n`` starts at ``n`` x
    the segment target (the source's GOP), and its parts follow one another."""

    def __init__(self, url: str, start: float) -> None:
        self.url, self.start = url, start
        self.lags: list[float] = []
        self.seen: set[tuple[int, int]] = set()
        self.errors = 0

    def _note(self, key: tuple[int, int], end: float, now: float) -> None:
        if key not in self.seen:
            self.seen.add(key)
            if len(self.seen) > 12:  # the first playlists list what was made before we asked
                self.lags.append(now - (self.start + end))

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=20) as client:
            query = ""
            while True:
                try:
                    r = await client.get(self.url + query)
                except httpx.TransportError:
                    self.errors += 1  # the origin is busy or restarting: ask again
                    await asyncio.sleep(0.05)
                    continue
                now = time.time()
                if r.status_code != 200:
                    await asyncio.sleep(0.05)
                    continue
                ends: dict[int, float] = {}
                last = (-1, -1)
                for dur, msn_s, idx_s in PART_URI.findall(r.text):
                    msn, idx = int(msn_s), int(idx_s)
                    ends[msn] = ends.get(msn, msn * SEGMENT_TARGET) + float(dur)
                    last = max(last, (msn, idx))
                    self._note((msn, idx), ends[msn], now)
                if last[0] >= 0:
                    query = f"?_HLS_msn={last[0]}&_HLS_part={last[1] + 1}"
                    continue
                for dur, msn_s in SEGMENT_URI.findall(r.text):
                    self._note((int(msn_s), -1), int(msn_s) * SEGMENT_TARGET + float(dur), now)
                await asyncio.sleep(0.05)


COLLECT_JS = """() => {
  window.__g2g = [];
  window.TidecastStamp.watch(document.getElementById('video'), (f) => {
    window.__g2g.push([f.displayMs, f.value, f.height]);
  });
}"""

STATE_JS = """() => {
  const p = window.tidecastPlayer, v = document.getElementById('video');
  const q = v.getVideoPlaybackQuality();
  const s = p.stats();
  return { samples: window.__g2g.splice(0), stalls: p.stalls.length, stallMs: p.stalls.reduce((t, x) => t + x.ms, 0),
           stalledNow: s.stalledMs, bufferStalls: p.bufferStalls, dropped: q.droppedVideoFrames,
           decoded: q.totalVideoFrames, latency: s.latencyS, target: s.targetLatencyS, lowLatency: s.lowLatency,
           errors: p.errors.length, jumps: p.liveJumps };
}"""


async def measure(cfg: Configuration, source: Path, args: argparse.Namespace, tmp: Path) -> Result:
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import async_playwright

    result = Result(cfg)
    work = tmp / cfg.key
    work.mkdir()
    http_port, rtmp_port, edge_port = free_port(), free_port(), free_port()
    children: list[Child] = []
    publisher: ffmpeg.FFmpegProcess | None = None
    try:
        serve = await Child.start("tidecast serve", [sys.executable, "-m", "tidecast", "serve"], work / "serve.log",
                                  serve_env(cfg, work / "data", http_port, rtmp_port, args.part_target))  # fmt: skip
        children.append(serve)
        origin = f"http://127.0.0.1:{http_port}"
        await wait_http(f"{origin}/api/v1/health", serve, timeout=60)
        token = (work / "data" / "admin-token").read_text().strip()
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(f"{origin}/api/v1/streams", json={"name": STREAM},
                                  headers={"authorization": f"Bearer {token}"})  # fmt: skip
            r.raise_for_status()
            key = str(r.json()["stream_key"])
        nginx = nginx_exe()
        assert nginx is not None
        conf = edge_conf(work / "edge", http_port, edge_port)
        edge = await Child.start("nginx edge", [nginx, "-p", str(work / "edge"), "-c", str(conf),
                                                "-g", "daemon off;"], work / "edge.log", dict(os.environ))  # fmt: skip
        children.append(edge)
        edge_url = f"http://127.0.0.1:{edge_port}"
        await wait_http(f"{edge_url}/api/v1/health", edge)

        progress = Progress()
        spawned = time.time()
        publisher = await ffmpeg.spawn(ffmpeg.publish_file_args(
            str(source), f"rtmp://127.0.0.1:{rtmp_port}/live/{key}", ffmpeg.ffmpeg_exe(),
            like_a_camera=True, progress=True), "publisher", stdout=True)  # fmt: skip
        reader = asyncio.create_task(progress.read(publisher.proc.stdout))
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
                )
                try:
                    page = await browser.new_page(viewport={"width": 1280, "height": 800})
                    await page.goto(f"{edge_url}/watch/{STREAM}")
                    await page.wait_for_function(
                        "window.tidecastPlayer.state === 'playing'", timeout=90_000
                    )
                    await page.add_script_tag(url=f"{edge_url}/static/stamp.js")
                    await page.evaluate(COLLECT_JS)
                    await asyncio.sleep(args.warmup)
                    if progress.reports == 0:
                        raise BenchError("the publisher reported no progress")
                    start_ms = progress.start * 1000
                    result.start_offset = progress.start - spawned
                    height = await page.evaluate(
                        "() => document.getElementById('video').videoHeight"
                    )
                    result.watched, media_url = await rendition_url(origin, int(height))
                    watcher = PartWatcher(media_url, progress.start)
                    watching = asyncio.create_task(watcher.run())
                    first = await page.evaluate(STATE_JS)
                    t0 = time.monotonic()
                    busy0, ours0 = machine_busy_seconds(), treecpu_seconds(os.getpid())
                    serve0 = treecpu_seconds(serve.proc.pid)
                    last = first
                    while time.monotonic() - t0 < args.seconds:
                        await asyncio.sleep(
                            min(2.0, max(0.1, args.seconds - (time.monotonic() - t0)))
                        )
                        if publisher.proc.returncode is not None:
                            raise BenchError(
                                f"the publisher stopped early:\n{publisher.stderr_tail[-5:]}"
                            )
                        last = await page.evaluate(STATE_JS)
                        for display_ms, value, height in last["samples"]:
                            if value is None:
                                result.unreadable += 1
                                continue
                            g = (display_ms - (start_ms + value)) / 1000
                            result.g2g.append((time.monotonic() - t0, g))
                            result.heights.append(int(height))
                        if last["latency"] is not None:
                            result.hls_latency.append(float(last["latency"]))
                        if last["target"] is not None:
                            result.target_latency.append(float(last["target"]))
                    watching.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watching
                    result.listed = watcher.lags
                    took = time.monotonic() - t0
                    result.ours_cores = (treecpu_seconds(os.getpid()) - ours0) / took
                    result.serve_cores = (treecpu_seconds(serve.proc.pid) - serve0) / took
                    result.foreign_cores = max(
                        0.0, (machine_busy_seconds() - busy0) / took - result.ours_cores
                    )
                    result.stalls = (
                        last["stalls"] - first["stalls"] + (1 if last["stalledNow"] else 0)
                    )
                    result.stall_ms = last["stallMs"] - first["stallMs"] + int(last["stalledNow"])
                    result.buffer_stalls = last["bufferStalls"] - first["bufferStalls"]
                    result.live_jumps = last["jumps"] - first["jumps"]
                    result.dropped = last["dropped"] - first["dropped"]
                    result.decoded = last["decoded"] - first["decoded"]
                    errors = await page.evaluate("() => window.tidecastPlayer.errors")
                    result.errors = list(errors)
                    if cfg.ll_hls and not last["lowLatency"]:
                        raise BenchError("the player did not see an LL-HLS playlist")
                finally:
                    await browser.close()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    except (BenchError, PlaywrightError, httpx.HTTPError) as exc:
        tail = "\n".join(c.name + ":\n" + c.tail(15) for c in children)
        raise BenchError(f"{cfg.label}: {exc}\n{tail}") from exc
    finally:
        if publisher is not None:
            await publisher.stop()
        for child in reversed(children):
            await child.stop(signal.SIGQUIT if child.name == "nginx edge" else signal.SIGINT)
    return result


# ---------------------------------------------------------------- report


def _s(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}"


def report(results: Sequence[Result], seconds: float) -> bool:
    span = min(60.0, seconds / 3)
    print()
    print(f"glass to glass over {seconds:g} s per configuration (s; every frame shown; "
          f"first/last: mean over the first/last {span:g} s)")  # fmt: skip
    head = (f"{'configuration':<35} {'frames':>6} {'p50':>5} {'p95':>5} {'max':>5} {'slope/min':>9} "
            f"{'first':>5} {'last':>5} {'stalls':>9} {'dropped':>11} {'hls.js lat/target':>17}  shown")  # fmt: skip
    print(head)
    print("-" * len(head))
    ok = True
    for r in results:
        v = r.values()
        first, last = first_last(r.g2g, span)
        lat = statistics.median(r.hls_latency) if r.hls_latency else math.nan
        tgt = statistics.median(r.target_latency) if r.target_latency else math.nan
        stalls = f"{r.stalls}/{r.buffer_stalls}b"
        print(f"{r.config.label:<35} {len(v):>6} {_s(percentile(v, 0.5)):>5} {_s(percentile(v, 0.95)):>5} "
              f"{_s(max(v) if v else math.nan):>5} {_s(slope_per_minute(r.g2g)):>9} {_s(first):>5} {_s(last):>5} "
              f"{stalls:>9} {f'{r.dropped}/{r.decoded}':>11} {f'{_s(lat)}/{_s(tgt)}':>17}  "
              f"{rendition_shares(r.heights)}")  # fmt: skip
        if r.listed:
            what = "part" if r.config.ll_hls else "segment"
            print(f"  {r.watched} {what}s listed at the origin, after their last frame was sent: "
                  f"p50 {_s(percentile(r.listed, 0.5))} p95 {_s(percentile(r.listed, 0.95))} "
                  f"max {_s(max(r.listed))} (n={len(r.listed)})")  # fmt: skip
        if r.live_jumps:
            print(
                f"  the player was pushed far behind and jumped back to live {r.live_jumps} time(s)"
            )
        if r.unreadable:
            print(f"  ({r.unreadable} frames without a readable stamp)")
    print("stalls: waiting events / hls.js buffer-stall errors; dropped: dropped/decoded frames; "
          f"publisher start-up (spawn -> first frame sent): "
          f"{', '.join(f'{r.start_offset * 1000:.0f}' for r in results)} ms")  # fmt: skip
    print(
        f"CPU, in cores (of {os.cpu_count()}): tidecast serve + the rest of this bench "
        "(Chromium, nginx, publisher) / all other processes on the machine: "
        + ", ".join(
            f"{r.serve_cores:.2f}+{r.ours_cores - r.serve_cores:.2f}/{r.foreign_cores:.2f}"
            for r in results
        )
    )
    busy = [r.config.key for r in results if r.foreign_cores > 0.2]
    if busy:
        print(
            f"WARNING: other processes used the machine during {', '.join(busy)}: "
            "those figures are not this system's alone"
        )
    base = next((r for r in results if r.config.key == BASELINE), None)
    parts = []
    for r in results:
        p95 = percentile(r.values(), 0.95)
        piece = f"{r.config.key} p95 {_s(p95)} s"
        if base is not None and r is not base and base.values():
            piece += f" ({p95 / percentile(base.values(), 0.95):.2f}x baseline)"
        if r.config.target_p95 is not None:
            met = p95 <= r.config.target_p95 and r.stalls == 0 and r.live_jumps == 0
            ok = ok and met
            piece += (
                f" [target <= {r.config.target_p95:g} s, no stall: {'met' if met else 'NOT met'}]"
            )
        parts.append(piece)
    print("summary: " + "; ".join(parts))
    return ok


async def run(args: argparse.Namespace) -> int:
    if nginx_exe() is None:
        print("tidecast bench g2g: needs nginx: apt-get install -y nginx-light (or scripts/setup.sh --test)",
              file=sys.stderr)  # fmt: skip
        return 2
    if not os.access(CHROMIUM, os.X_OK):
        print(
            f"tidecast bench g2g: needs Chromium at {CHROMIUM}: apt-get install -y chromium",
            file=sys.stderr,
        )
        return 2
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request
    wanted = [c.strip() for c in args.configs.split(",") if c.strip()]
    known = {c.key: c for c in CONFIGURATIONS}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        print(f"tidecast bench g2g: unknown configuration(s) {', '.join(unknown)}; "
              f"known: {', '.join(known)}", file=sys.stderr)  # fmt: skip
        return 2
    configs = [known[w] for w in wanted]
    duration = args.warmup + args.seconds + 60  # start-up and the player's start
    with tempfile.TemporaryDirectory(prefix="tidecast-bench-g2g-") as tmp:
        tmpdir = Path(tmp)
        keep = Path(args.sources) if args.sources else tmpdir
        keep.mkdir(parents=True, exist_ok=True)
        sources = {name: await make_source(SOURCES[name], duration, keep)
                   for name in dict.fromkeys(c.source for c in configs)}  # fmt: skip
        results = []
        for cfg in configs:
            print(f"{cfg.label}: serve + edge + publisher + Chromium, {args.warmup:g} s warm-up, "
                  f"{args.seconds:g} s measured ...", flush=True)  # fmt: skip
            try:
                results.append(await measure(cfg, sources[cfg.source], args, tmpdir))
            except BenchError as exc:
                print(f"tidecast bench g2g: {exc}", file=sys.stderr)
                return 1
    return 0 if report(results, args.seconds) else 1


async def main(args: argparse.Namespace) -> int:
    """Run the bench; Ctrl-C or SIGTERM stop it with every process it started."""
    return await run_interruptibly(run(args), "tidecast bench g2g: interrupted; its processes are stopped")
