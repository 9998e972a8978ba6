"""``tidecast bench latency``: how soon after a segment's first frame reaches
ingest is that segment listed in the playlist at the origin?

One ffmpeg publishes a test pattern (x264, fixed GOP = segment target) through
ffmpeg's tee muxer to two receivers at once:

- tidecast (an in-process node on loopback ports); the playlist is polled over
  HTTP at the origin every 20 ms from another thread;
- the baseline: ffmpeg itself as RTMP server feeding its own HLS muxer (fMP4,
  temp-file + rename), whose playlist file is polled the same way.

For tidecast the figure is ``listed - first frame arrival`` of each segment
(the segmenter records the arrival). Both receivers get the same frames at the
same moment, so for the side-by-side comparison a segment's first frame is
stamped ``A0 + (segment start - first segment start)`` on both, where ``A0`` is
the arrival of the first frame at tidecast.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tidecast import ffmpeg
from tidecast.config import Settings
from tidecast.messages import SegmentReady
from tidecast.node import Node
from tidecast.transcode.ladder import rungs_for_source

POLL = 0.02


@dataclass
class PlaylistWatcher:
    """Polls a playlist (URL or file) from a thread; records when each URI first appears."""

    source: str
    seen: dict[str, float] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: int = 0

    def run(self) -> None:
        client = httpx.Client(timeout=2) if self.source.startswith("http") else None
        while not self.stop.is_set():
            text = self._read(client)
            now = time.time()
            if text:
                for dur, uri in re.findall(r"#EXTINF:([\d.]+),[^\n]*\n([^#\n][^\n]*)", text):
                    if uri not in self.seen:
                        self.seen[uri] = now
                        self.durations[uri] = float(dur)
                        self.order.append(uri)
            time.sleep(POLL)
        if client:
            client.close()

    def _read(self, client: httpx.Client | None) -> str:
        try:
            if client is not None:
                r = client.get(self.source)
                return r.text if r.status_code == 200 else ""
            return Path(self.source).read_text()
        except (OSError, httpx.HTTPError):
            self.errors += 1  # not there yet / being replaced
            return ""


def summarize(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    if not v:
        return {"n": 0, "p50": float("nan"), "p95": float("nan"), "max": float("nan")}
    p95 = v[min(len(v) - 1, max(0, round(0.95 * len(v)) - 1))]
    return {"n": len(v), "p50": statistics.median(v), "p95": p95, "max": v[-1]}


def _fmt(s: dict[str, float]) -> str:
    return f"n={s['n']:<3} p50={s['p50']:.3f} s  p95={s['p95']:.3f} s  max={s['max']:.3f} s"


async def run(segments: int, size: str, fps: int, target: float, ladder: str = "none") -> int:
    w, h = (int(x) for x in size.split("x"))
    exe = ffmpeg.ffmpeg_exe()
    with tempfile.TemporaryDirectory(prefix="tidecast-bench-") as tmp:
        tmpdir = Path(tmp)
        settings = Settings(
            host="127.0.0.1", http_port=0, rtmp_port=0, data_dir=tmpdir / "data",
            segment_target=target, playlist_window=10, reconnect_grace=0, ladder=ladder,
        )  # fmt: skip
        rungs = rungs_for_source(settings.rungs(), w, h)
        watched = rungs[0].name if rungs else "source"  # the top rendition
        node = Node(settings)
        await node.start()
        arrivals: dict[str, SegmentReady] = {}  # by segment key, for the watched rendition

        def record(msg: SegmentReady, _listed: float) -> None:
            arrivals.setdefault(msg.segment_key, msg)

        node.packager.hooks.append(record)
        key = node.db.create_stream("bench").key
        base_dir = tmpdir / "baseline"
        base_dir.mkdir()
        base_port = _free_port()
        baseline = await ffmpeg.spawn(
            ffmpeg.hls_baseline_server_args(f"rtmp://127.0.0.1:{base_port}/live/bench",
                                            str(base_dir / "index.m3u8"), target, exe),
            "baseline",
        )  # fmt: skip
        await asyncio.sleep(1.0)  # let it listen
        pattern = ffmpeg.TestPattern(
            width=w, height=h, fps=fps, gop_seconds=target, duration=segments * target + 3,
            font=ffmpeg.clock_font(),
        )  # fmt: skip
        urls = [settings.publish_url(key).replace(":0/", f":{node.rtmp.port}/"),
                f"rtmp://127.0.0.1:{base_port}/live/bench"]  # fmt: skip
        ours = PlaylistWatcher(f"http://127.0.0.1:{node.http_port}/hls/bench/{watched}.m3u8")
        theirs = PlaylistWatcher(str(base_dir / "index.m3u8"))
        threads = [threading.Thread(target=w.run, daemon=True) for w in (ours, theirs)]
        for t in threads:
            t.start()
        print(f"publishing {segments * target + 3:.0f} s of {w}x{h}@{fps}, GOP {target:g} s, "
              "to tidecast and to the ffmpeg HLS baseline ...", flush=True)  # fmt: skip
        try:
            await ffmpeg.run(ffmpeg.publish_tee_args(pattern, urls, exe), timeout=segments * target + 60,
                             name="publisher")  # fmt: skip
            await asyncio.sleep(1.0)
        finally:
            for wt in (ours, theirs):
                wt.stop.set()
            for t in threads:
                t.join()
            await baseline.stop()
            await node.aclose()

        # tidecast, by the definition
        by_uri = {m.segment_key.split("/hls/bench/")[-1].removeprefix("hls/bench/"): m
                  for m in arrivals.values()}  # fmt: skip
        complete = [u for u in ours.order if u in by_uri][:-1]  # the last one is cut by the stop
        direct = [ours.seen[u] - by_uri[u].first_frame_arrival for u in complete]
        after_end = [ours.seen[u] - (by_uri[u].first_frame_arrival + by_uri[u].duration)
                     for u in complete]  # fmt: skip
        # side by side, on one capture clock
        a0 = by_uri[complete[0]].first_frame_arrival if complete else 0.0
        s0 = by_uri[complete[0]].start if complete else 0.0
        ours_common = [ours.seen[u] - (a0 + by_uri[u].start - s0) for u in complete]
        theirs_common: list[float] = []
        start = 0.0
        for u in theirs.order[:-1]:
            theirs_common.append(theirs.seen[u] - (a0 + start))
            start += theirs.durations[u]
        n = min(len(ours_common), len(theirs_common))
        ours_s, theirs_s = summarize(ours_common[:n]), summarize(theirs_common[:n])
        d = summarize(direct)
        print()
        print(f"segment target {target:g} s; ladder {ladder!r}, watching the {watched!r} playlist; "
              f"{len(complete)} tidecast segments measured")  # fmt: skip
        print(f"tidecast  first frame in -> listed at origin: {_fmt(d)}")
        print(f"tidecast  segment complete -> listed:         {_fmt(summarize(after_end))}")
        print("side by side (same capture clock, first frame -> listed):")
        print(f"  tidecast (HTTP origin)        {_fmt(ours_s)}")
        print(f"  baseline (ffmpeg hls, file)   {_fmt(theirs_s)}")
        if theirs_s["p95"] == theirs_s["p95"] and ours_s["p95"] > 0:
            print(f"  ratio baseline/tidecast p50 = {theirs_s['p50'] / ours_s['p50']:.3f}, "
                  f"p95 = {theirs_s['p95'] / ours_s['p95']:.3f}  (>1: tidecast lists sooner)")  # fmt: skip
        goal = target + (1.5 if rungs else 0.5)
        ok = d["n"] >= min(segments, 30) and d["p95"] <= goal
        print(f"target p95 <= {goal:.2f} s over >= {min(segments, 30)} segments: "
              f"{'met' if ok else 'NOT met'}")  # fmt: skip
        return 0 if ok else 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main(args: argparse.Namespace) -> int:
    return await run(args.segments + 1, args.size, args.fps, args.segment_target, args.ladder)
