"""Overload: a 1080p60 source on one transcode worker with the default ladder, about 3x
more than it can encode (measured by the test and printed), on NATS JetStream with a
short ack wait. A coordinator holds only the jobs it runs, so nothing waits past its
ack wait: lag stays bounded, no job is encoded twice more than 1% of the time and none
is dead-lettered; the live stream degrades rung by rung and recovers (the ladder comes
back while the overload goes on, and whole once it ends); the lowest rung never skips."""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.bus.test_bus_contract import NATS_URL, ensure_nats
from tests.conftest import start_server
from tests.e2e.conftest import Clips
from tests.e2e.watch import PlaylistWatcher, whole_playlist
from tests.services import drop_nats_namespace
from tidecast import ffmpeg

pytestmark = [pytest.mark.e2e, pytest.mark.heavy]

THRESHOLD = 6.0  # s of transcode lag before new segments skip a rung


def gauge(text: str, name: str, stream: str) -> float | None:
    m = re.search(rf'^{name}\{{stream="{stream}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def test_three_times_overload_degrades_by_rungs_and_recovers(tmp_path: Path, clips: Clips) -> None:
    ensure_nats()
    prefix = "ovl" + secrets.token_hex(3)
    source = clips(1920, 1080, 60, 10, bitrate_k=8000)
    env = {
        "TIDECAST_BUS_URL": NATS_URL, "TIDECAST_BUS_PREFIX": prefix, "TIDECAST_LADDER": "default",
        "TIDECAST_PASSTHROUGH": "0",  # every rung encoded, the 1080p60 one too: the overload
        "TIDECAST_WORKERS": "1", "TIDECAST_JOB_ACK_WAIT": "4", "TIDECAST_HEAL": "false",
        "TIDECAST_TRANSCODE_LAG_THRESHOLD": str(THRESHOLD),
    }  # fmt: skip
    server = start_server(tmp_path / "data", "--reconnect-grace", "0", "--playlist-window", "100", env=env)
    try:
        key = server.create_stream("ov")
        args = ffmpeg.publish_file_args(str(source), server.rtmp_url(key), ffmpeg.ffmpeg_exe(), loops=5)
        # 60 s: the jobs queued before the ladder degraded (about 30 s of work at 3x) drain
        # first, so a shorter publish ends before the ladder can come back
        pub = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        watcher = PlaylistWatcher([server.http], "ov", ("1080p", "720p", "480p", "240p", "audio"), interval=0.5)
        watcher.start()
        samples: list[tuple[float, float, float]] = []  # (t, lag, skipped rungs)
        t0 = time.monotonic()
        while pub.poll() is None and time.monotonic() - t0 < 120:
            text = httpx.get(f"{server.http}/metrics", headers=server.admin).text
            lag = gauge(text, "tidecast_transcode_lag_seconds", "ov")
            skipped = gauge(text, "tidecast_transcode_skipped_rungs", "ov")
            if lag is not None and skipped is not None:
                samples.append((time.monotonic() - t0, lag, skipped))
            time.sleep(0.5)
        assert pub.wait(30) == 0, pub.stderr.read().decode(errors="replace")[-2000:] if pub.stderr else ""

        def ended() -> bool:
            return all("#EXT-X-ENDLIST" in httpx.get(f"{server.http}/hls/ov/{r}.m3u8").text
                       for r in ("1080p", "720p", "480p", "240p", "audio"))  # fmt: skip

        deadline = time.monotonic() + 60
        while not ended() and time.monotonic() < deadline:  # noqa: ASYNC110 - a plain test thread
            time.sleep(0.5)
        assert ended(), server.log()[-3000:]
        watcher.finish()
        assert not watcher.problems, watcher.problems[:10]

        status = httpx.get(f"{server.http}/api/v1/transcode", headers=server.admin).json()
        jobs = status["jobs_done"]
        dup_rate = status["duplicate_encodes"] / max(1, jobs)
        lags = [lag for _, lag, _ in samples]
        skips = [s for _, _, s in samples]
        gaps = {r: sorted(v) for r, v in watcher.gaps_seen.items()}
        print(f"overload: mean job {status['job_seconds_mean']:.2f} s per 2 s segment (skips included); max lag {max(lags):.1f} s; skipped rungs seen {sorted(set(skips))}; "
              f"{jobs} jobs, {status['duplicate_encodes']} encoded twice ({dup_rate:.1%}), {status['retries']} "
              f"retried, {status['dead_lettered']} dead-lettered; live gaps {{r: len}} "
              f"{ {r: len(v) for r, v in gaps.items()} }")  # shown with -s
        assert status["dead_lettered"] == 0
        assert dup_rate <= 0.01, status
        # bounded: it rises past the threshold while each new segment drops one more rung
        assert max(lags) <= 4 * THRESHOLD, samples
        # degrades by rungs, top first, and recovers while the overload goes on
        assert max(skips) >= 1 and "1080p" in gaps, samples
        peak = skips.index(max(skips))
        assert any(s < max(skips) for s in skips[peak:]), f"never recovered: {samples}"
        assert "240p" not in gaps and "audio" not in gaps  # the lowest rung is never skipped
        assert len(gaps.get("1080p", ())) >= len(gaps.get("720p", ())) >= len(gaps.get("480p", ()))
        pl = whole_playlist(httpx.get(f"{server.http}/hls/ov/240p.m3u8").text)
        assert len(pl.segments) >= 18
    finally:
        server.stop()
        drop_nats_namespace(NATS_URL, prefix)
