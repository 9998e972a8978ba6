"""Recordings heal. A 40 s 1080p publish to ``tidecast serve`` on its embedded defaults
(the default ladder, one worker per core) while a transcoding ffmpeg is SIGKILLed every
~4 s, with one attempt per job: live degrades (every killed job is dead-lettered,
backpressure may skip top rungs; the live playlists carry EXT-X-GAP meanwhile), but within 3 minutes of the end the VOD lists
every segment of every rendition, none a gap, all decodable — what live skipped or lost
is encoded again in the background, at low priority."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import start_server, wait_for
from tests.e2e.conftest import Clips
from tests.e2e.media_check import assert_video_continuous, fetch_segments
from tests.e2e.watch import PlaylistWatcher, seq_of, whole_playlist
from tidecast import ffmpeg

pytestmark = [pytest.mark.e2e, pytest.mark.heavy]

RENDITIONS = ("1080p", "720p", "480p", "240p", "audio")


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def live_transcodes(server_pid: int) -> list[int]:
    """The ffmpeg processes of the live transcode workers (not the heal worker's)."""
    out = []
    for worker in children(server_pid):
        line = cmdline(worker)
        if "tidecast.transcode.worker" in line and "--idle" not in line:
            out += [p for p in children(worker) if "ffmpeg" in cmdline(p)]
    return out


def test_a_recording_degraded_live_heals(tmp_path: Path, clips: Clips) -> None:
    source = clips(1920, 1080, 30, 40, bitrate_k=6000)
    server = start_server(tmp_path / "data", "--reconnect-grace", "0", "--playlist-window", "100",
                          env={"TIDECAST_LADDER": "default",
                               "TIDECAST_PASSTHROUGH": "0",  # the 1080p rung is encoded (and killed) too
                               # one attempt per job: a killed transcode is dead-lettered, so live
                               # degrades for sure (a retry may otherwise make it in time)
                               "TIDECAST_TRANSCODE_ATTEMPTS": "1"})  # fmt: skip
    try:
        key = server.create_stream("heal")
        pub = subprocess.Popen(ffmpeg.publish_file_args(str(source), server.rtmp_url(key), ffmpeg.ffmpeg_exe()),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        watcher = PlaylistWatcher([server.http], "heal", RENDITIONS, interval=0.5)
        watcher.start()
        rng = random.Random(11)
        kills = 0
        t0 = time.monotonic()
        while pub.poll() is None and time.monotonic() - t0 < 90:
            time.sleep(3 + 2 * rng.random())
            victims = live_transcodes(server.proc.pid)
            if victims:
                try:
                    os.kill(rng.choice(victims), signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass  # it finished first
        assert pub.wait(30) == 0, pub.stderr.read().decode(errors="replace")[-2000:] if pub.stderr else ""
        ended_at = time.monotonic()
        assert kills >= 6, f"only {kills} transcodes were killed"

        def bid() -> str | None:
            rows = httpx.get(f"{server.http}/api/v1/broadcasts?stream=heal").json()
            return rows[0]["id"] if rows and rows[0]["vod"] else None

        wait_for(lambda: bid() is not None, 120, what=f"the VOD\n{server.log()[-3000:]}")
        broadcast = bid()

        def whole() -> bool:
            if httpx.get(f"{server.http}/api/v1/broadcasts/{broadcast}").json()["gaps"]:
                return False  # the recording has gaps left
            return not any("#EXT-X-GAP" in httpx.get(f"{server.http}/hls/heal/{broadcast}/{r}.m3u8").text
                           for r in RENDITIONS)  # and the VOD written since lists none  # fmt: skip

        wait_for(whole, 180 - (time.monotonic() - ended_at), interval=1.0,
                 what=f"the recording to heal\n{server.log()[-4000:]}")  # fmt: skip
        healed_in = time.monotonic() - ended_at
        watcher.finish()
        assert not watcher.problems, watcher.problems[:10]
        info = httpx.get(f"{server.http}/api/v1/broadcasts/{broadcast}").json()
        status = httpx.get(f"{server.http}/api/v1/transcode", headers=server.admin).json()
        live_gaps = {r: len(v) for r, v in watcher.gaps_seen.items()}
        print(f"heal: {kills} ffmpeg SIGKILLs; live gaps seen {live_gaps}; {info['healed']} segments healed "
              f"{healed_in:.0f} s after the end; transcode {status}")  # shown with -s
        assert info["healed"] >= 1 and live_gaps, "live never degraded: the test did not test healing"

        base = f"{server.http}/hls/heal/{broadcast}"
        pls = {}
        for r in RENDITIONS:
            text = httpx.get(f"{base}/{r}.m3u8").text
            pl = pls[r] = whole_playlist(text)
            assert pl.is_endlist and "#EXT-X-GAP" not in text, f"{r}:\n{text}"
            assert [seq_of(s.uri) for s in pl.segments] == list(range(len(pl.segments))), r
        counts = {len(pl.segments) for pl in pls.values()}
        assert len(counts) == 1 and counts.pop() >= 19

        def decoded(r: str) -> None:  # every segment decodes (and video runs on without a break)
            reports = [rep for _, _, rep in fetch_segments(base, pls[r], video=r != "audio")]
            if r != "audio":
                assert {rep.height for rep in reports} == {int(r[:-1])}, r
                assert_video_continuous(reports, 30)

        with ThreadPoolExecutor(2) as pool:  # decoding releases the GIL: both cores
            list(pool.map(decoded, RENDITIONS))
    finally:
        server.stop()
