"""``tidecast bench transcode``: segment-parallel pipeline vs one continuous ffmpeg.

The same 60 s 1080p30 source (rendered once with lavfi, fixed 2 s GOP) goes
(a) through ONE continuous ffmpeg encoding the same ladder (the baseline), and
(b) through the segment pipeline: an in-process node ingests it over RTMP as
fast as it comes (no -re), the segmenter cuts it, and the worker pool
transcodes every segment; the clock stops when every rendition's playlist
lists the last segment. Both print frames per second; the ratio is (b)/(a).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from tidecast import ffmpeg
from tidecast.config import Settings
from tidecast.node import Node
from tidecast.transcode.job import output_size
from tidecast.transcode.ladder import DEFAULT_LADDER, rungs_for_source


async def run(seconds: float, width: int, height: int, fps: int, workers: int, preset: str) -> int:
    exe = ffmpeg.ffmpeg_exe()
    frames = round(seconds * fps)
    with tempfile.TemporaryDirectory(prefix="tidecast-bench-") as tmp:
        tmpdir = Path(tmp)
        source = tmpdir / "source.flv"
        print(f"rendering a {seconds:g} s {width}x{height}@{fps} source ...", flush=True)
        pattern = ffmpeg.TestPattern(width=width, height=height, fps=fps, duration=seconds,
                                     video_bitrate_k=8000, font=ffmpeg.clock_font())  # fmt: skip
        await ffmpeg.run(ffmpeg.render_test_pattern_args(pattern, str(source), exe), 600, "render")
        rungs = rungs_for_source(DEFAULT_LADDER, width, height)
        print("ladder: " + ", ".join(f"{r.name} {r.video_kbps} kb/s" for r in rungs))

        # (a) the baseline: one continuous ffmpeg, same ladder, same x264 settings
        outs = []
        for r in rungs:
            w, h = output_size(r, width, height)
            outs.append(ffmpeg.RungOutput(w, h, r.video_kbps, r.profile, str(tmpdir / f"cont-{r.name}.mp4")))
        t0 = time.monotonic()
        await ffmpeg.run(ffmpeg.transcode_continuous_args(str(source), outs, preset, 2 * fps, exe),
                         3600, "continuous")  # fmt: skip
        cont = time.monotonic() - t0
        cont_fps = frames / cont
        print(f"(a) one continuous ffmpeg:   {cont:7.2f} s  {cont_fps:7.2f} frames/s", flush=True)

        # (b) the segment pipeline with its worker pool
        settings = Settings(
            host="127.0.0.1", http_port=0, rtmp_port=0, data_dir=tmpdir / "data",
            reconnect_grace=0, playlist_window=1000, workers=workers, x264_preset=preset,
            transcode_lag_threshold=float("inf"),  # faster than real time: encode every rung
        )  # fmt: skip
        node = Node(settings)
        await node.start()
        try:
            key = node.db.create_stream("bench").key
            url = f"rtmp://127.0.0.1:{node.rtmp.port}/live/{key}"
            t0 = time.monotonic()
            await ffmpeg.run(ffmpeg.publish_file_args(str(source), url, exe, realtime=False), 600, "ingest")
            top = f"http://127.0.0.1:{node.http_port}/hls/bench/{rungs[-1].name}.m3u8"
            async with httpx.AsyncClient() as client:
                while True:
                    texts = [(await client.get(top.replace(rungs[-1].name, r.name))).text for r in rungs]
                    if all("#EXT-X-ENDLIST" in t for t in texts):
                        break
                    if time.monotonic() - t0 > 3600:
                        print("the pipeline did not finish within an hour")
                        return 1
                    await asyncio.sleep(0.05)
            seg = time.monotonic() - t0
            snap = node.transcoder.snapshot() if node.transcoder else {}
        finally:
            await node.aclose()
        seg_fps = frames / seg
        n_workers = len(node.transcoder.workers) if node.transcoder else 0
        print(f"(b) segment pipeline, {n_workers} workers: {seg:7.2f} s  {seg_fps:7.2f} frames/s")
        print(f"    jobs {snap.get('jobs_done')}, mean per-segment transcode "
              f"{snap.get('job_seconds_mean') or 0:.3f} s, retries {snap.get('retries')}")  # fmt: skip
        ratio = seg_fps / cont_fps
        print(f"ratio (b)/(a) = {ratio:.3f}  (target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'})")
        return 0 if ratio >= 0.95 else 1


async def main(args: argparse.Namespace) -> int:
    w, h = (int(x) for x in args.size.split("x"))
    return await run(args.seconds, w, h, args.fps, args.workers, args.preset)
