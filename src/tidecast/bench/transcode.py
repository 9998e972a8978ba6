"""``tidecast bench transcode``: segment-parallel pipeline vs one continuous ffmpeg.

The same 60 s 1080p30 source (rendered once with lavfi, fixed 2 s GOP) goes
(a) through ONE continuous ffmpeg encoding the same ladder (the baseline), and
(b) through the segment pipeline: an in-process node ingests it over RTMP as
fast as it comes (no -re), the segmenter cuts it, and the worker pool
transcodes every segment; the clock stops when every rendition's playlist
lists the last segment. Each side runs ``--runs`` times (3), interleaved (a, b,
a, b, ...) so a machine that gets busier or quieter meanwhile weighs on both;
both print frames per second per run, the median and the spread (max - min);
the ratio is median (b) / median (a). The pipeline runs with the node's
settings: LL-HLS parts on (``--ll-hls off`` for whole-segment jobs).

``--realtime`` measures latency instead: the source (without B-frames, as an
encoder tuned for latency makes it; ``--bframes`` for one with x264's defaults) is
published at its own pace and the bench reports, from the bus, how long after a
source part was stored every rung's same part was (median, 95th percentile,
worst; the first part of a segment separately: it includes ffmpeg's start),
and how long after a segment's first frame reached ingest every rung had its
first part.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tidecast import ffmpeg
from tidecast.config import Settings
from tidecast.messages import Message, PartReady, TranscodeJob
from tidecast.node import Node
from tidecast.transcode.job import output_size
from tidecast.transcode.ladder import DEFAULT_LADDER, Rung, rungs_for_source


def _spread(values: list[float]) -> str:
    return f"median {statistics.median(values):7.2f}  spread {max(values) - min(values):5.2f}"


async def _continuous(source: Path, tmpdir: Path, rungs: tuple[Rung, ...], width: int, height: int,
                      fps: int, preset: str, exe: str) -> float:  # fmt: skip
    outs = []
    for r in rungs:
        w, h = output_size(r, width, height)
        outs.append(ffmpeg.RungOutput(w, h, r.video_kbps, r.profile, str(tmpdir / f"cont-{r.name}.mp4")))
    t0 = time.monotonic()
    await ffmpeg.run(ffmpeg.transcode_continuous_args(str(source), outs, preset, 2 * fps, exe),
                     3600, "continuous")  # fmt: skip
    return time.monotonic() - t0


async def _pipeline(source: Path, data_dir: Path, rungs: tuple[Rung, ...], workers: int, preset: str,
                    exe: str, *, ll: bool, realtime: bool = False,
                    ) -> tuple[float, dict[str, object], list[tuple[float, Message]]]:  # fmt: skip
    settings = Settings(
        host="127.0.0.1", http_port=0, rtmp_port=0, data_dir=data_dir,
        reconnect_grace=0, playlist_window=1000, workers=workers, x264_preset=preset,
        transcode_lag_threshold=float("inf"),  # faster than real time: encode every rung
        passthrough=False,  # the same rungs as the baseline encodes, the top one included
        ll_hls=ll,
    )  # fmt: skip
    node = Node(settings)
    watch = node.bus.subscribe("segment.>")
    jobs = node.bus.subscribe("job.>")
    seen: list[tuple[float, Message]] = []

    async def record() -> None:
        while (d := await watch.next()) is not None:
            seen.append((time.time(), d.message))

    async def record_jobs() -> None:
        while (d := await jobs.next()) is not None:
            seen.append((time.time(), d.message))

    await node.start()
    tasks = [asyncio.create_task(record()), asyncio.create_task(record_jobs())] if realtime else []
    try:
        key = node.db.create_stream("bench").key
        url = f"rtmp://127.0.0.1:{node.rtmp.port}/live/{key}"
        t0 = time.monotonic()
        await ffmpeg.run(ffmpeg.publish_file_args(str(source), url, exe, realtime=realtime), 3600, "ingest")
        top = f"http://127.0.0.1:{node.http_port}/hls/bench/{rungs[-1].name}.m3u8"
        async with httpx.AsyncClient() as client:
            while True:
                texts = [(await client.get(top.replace(rungs[-1].name, r.name))).text for r in rungs]
                if all("#EXT-X-ENDLIST" in t for t in texts):
                    break
                if time.monotonic() - t0 > 3600:
                    raise RuntimeError("the pipeline did not finish within an hour")
                await asyncio.sleep(0.05)
        elapsed = time.monotonic() - t0
        snap = node.transcoder.snapshot() if node.transcoder else {}
    finally:
        await node.aclose()
        for t in tasks:
            t.cancel()
    return elapsed, snap, seen


def _latency_report(seen: list[tuple[float, Message]], rungs: tuple[Rung, ...]) -> None:
    src: dict[tuple[int, int], float] = {}
    out: dict[tuple[str, int, int], float] = {}
    first_frame: dict[int, float] = {}
    for _, msg in seen:
        if isinstance(msg, PartReady):
            if msg.rendition == "source":
                src[(msg.sequence, msg.index)] = msg.produced_at
            else:
                out[(msg.rendition, msg.sequence, msg.index)] = msg.produced_at
        elif isinstance(msg, TranscodeJob):
            first_frame[msg.sequence] = msg.first_frame_arrival
    names = [r.name for r in rungs]

    def line(what: str, values: list[float]) -> None:
        if not values:
            print(f"{what}: no data")
            return
        v = sorted(values)
        p95 = v[min(len(v) - 1, round(0.95 * (len(v) - 1)))]
        print(f"{what}: median {statistics.median(v) * 1000:6.0f} ms  p95 {p95 * 1000:6.0f} ms  "
              f"worst {v[-1] * 1000:6.0f} ms  ({len(v)} parts)")  # fmt: skip

    later = [out[(n, s, i)] - t for (s, i), t in src.items() if i > 0 for n in names if (n, s, i) in out]
    firsts = [out[(n, s, 0)] - t for (s, i), t in src.items() if i == 0 for n in names if (n, s, 0) in out]
    line("source part stored -> every rung's same part stored (parts 1..)", later)
    line("source part 0 stored -> every rung's part 0 stored", firsts)
    ready = []
    for s, t in first_frame.items():
        done = [out.get((n, s, 0)) for n in names]
        if t and all(d is not None for d in done):
            ready.append(max(d for d in done if d is not None) - t)
    line("segment's first frame at ingest -> every rung has its first part", ready)


async def run(seconds: float, width: int, height: int, fps: int, workers: int, preset: str,
              runs: int = 3, ll: bool = True, realtime: bool = False, bframes: bool = False) -> int:  # fmt: skip
    exe = ffmpeg.ffmpeg_exe()
    frames = round(seconds * fps)
    with tempfile.TemporaryDirectory(prefix="tidecast-bench-") as tmp:
        tmpdir = Path(tmp)
        source = tmpdir / "source.flv"
        print(f"rendering a {seconds:g} s {width}x{height}@{fps} source ...", flush=True)
        pattern = ffmpeg.TestPattern(width=width, height=height, fps=fps, duration=seconds,
                                     video_bitrate_k=8000, font=ffmpeg.clock_font())  # fmt: skip
        # a live source for the latency run: no B-frames (a decoder holds reordered pictures
        # back until later ones come, a part later; see ffmpeg.transcode_stream_args)
        render = ffmpeg.render_test_pattern_args(pattern, str(source), exe,
                                                 zerolatency=realtime and not bframes)  # fmt: skip
        await ffmpeg.run(render, 600, "render")
        rungs = rungs_for_source(DEFAULT_LADDER, width, height)
        print("ladder: " + ", ".join(f"{r.name} {r.video_kbps} kb/s" for r in rungs))
        mode = "LL-HLS parts" if ll else "whole segments"
        if realtime:
            print(f"publishing in real time through the pipeline ({mode}) ...", flush=True)
            elapsed, snap, seen = await _pipeline(source, tmpdir / "data-rt", rungs, workers, preset, exe,
                                                  ll=ll, realtime=True)  # fmt: skip
            print(f"done in {elapsed:.1f} s; jobs {snap.get('jobs_done')}, retries {snap.get('retries')}, "
                  f"parts published {snap.get('parts_published')}, wake-ups {snap.get('wakeups')}")  # fmt: skip
            _latency_report(seen, rungs)
            return 0
        cont_fps: list[float] = []
        seg_fps: list[float] = []
        n_workers = 0
        for i in range(runs):
            cont = await _continuous(source, tmpdir, rungs, width, height, fps, preset, exe)
            cont_fps.append(frames / cont)
            print(f"run {i + 1}/{runs} (a) one continuous ffmpeg:   {cont:7.2f} s  {frames / cont:7.2f} frames/s",
                  flush=True)  # fmt: skip
            seg, snap, _ = await _pipeline(source, tmpdir / f"data-{i}", rungs, workers, preset, exe, ll=ll)
            seg_fps.append(frames / seg)
            n_workers = len(snap.get("workers") or [])  # type: ignore[arg-type]
            print(f"run {i + 1}/{runs} (b) segment pipeline ({mode}, {n_workers} workers): {seg:7.2f} s  "
                  f"{frames / seg:7.2f} frames/s; jobs {snap.get('jobs_done')}, mean per-segment "
                  f"transcode {snap.get('job_seconds_mean') or 0:.3f} s, retries {snap.get('retries')}",
                  flush=True)  # fmt: skip
        print(f"(a) one continuous ffmpeg, frames/s:  {_spread(cont_fps)}")
        print(f"(b) segment pipeline, frames/s:       {_spread(seg_fps)}")
        ratio = statistics.median(seg_fps) / statistics.median(cont_fps)
        print(f"ratio of medians (b)/(a) = {ratio:.3f}  (target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'})")
        return 0 if ratio >= 0.95 else 1


async def main(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per playlist poll
    w, h = (int(x) for x in args.size.split("x"))
    return await run(args.seconds, w, h, args.fps, args.workers, args.preset, runs=args.runs,
                     ll=args.ll_hls == "on", realtime=args.realtime, bframes=args.bframes)  # fmt: skip
