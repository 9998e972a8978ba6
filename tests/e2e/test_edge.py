"""An nginx edge (config from `tidecast edge-config`) in front of two origins: a full
`tidecast serve` and a `tidecast origin` over the same data directory. Segments are
cached (HIT), playlists stay fresh, and stopping one origin does not stop the edge."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import m3u8
import pytest

from tests.conftest import free_port, start_server, wait_for
from tests.e2e.media_check import decode_segment
from tidecast import ffmpeg
from tidecast.edge.nginx import EdgeConfig, render

pytestmark = pytest.mark.e2e
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def status(url: str) -> int:
    try:
        return httpx.get(url, timeout=3).status_code
    except httpx.TransportError:
        return 0  # not listening yet


def test_edge_caches_and_fails_over(tmp_path: Path, ffmpeg_exe: str) -> None:
    if not os.path.exists(NGINX):
        pytest.fail("nginx is not installed: scripts/setup.sh --test installs it")
    data = tmp_path / "data"
    server = start_server(data, "--reconnect-grace", "0", "--playlist-window", "40")
    origin_port = free_port()
    origin = subprocess.Popen(
        [sys.executable, "-m", "tidecast", "origin"],
        env={**os.environ, "TIDECAST_DATA_DIR": str(data), "TIDECAST_HOST": "127.0.0.1",
             "TIDECAST_HTTP_PORT": str(origin_port)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    edge_port = free_port()
    prefix = tmp_path / "edge"
    (prefix / "cache").mkdir(parents=True)
    conf = prefix / "nginx.conf"
    conf.write_text(render(EdgeConfig(
        origins=[f"127.0.0.1:{server.http_port}", f"127.0.0.1:{origin_port}"], listen=f"127.0.0.1:{edge_port}",
        cache_dir=str(prefix / "cache"), pid_file=str(prefix / "nginx.pid"),
        error_log=str(prefix / "error.log"), worker_processes="1", user="root",  # the test's files are root's
    )))  # fmt: skip
    assert subprocess.run([NGINX, "-t", "-c", str(conf), "-p", str(prefix)], capture_output=True).returncode == 0
    nginx = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    edge = f"http://127.0.0.1:{edge_port}"
    try:
        wait_for(lambda: status(f"http://127.0.0.1:{origin_port}/api/v1/health") == 200, 20, what="origin 2")
        wait_for(lambda: status(f"{edge}/api/v1/health") == 200, 10, what="the edge")
        key = server.create_stream("edge")
        p = ffmpeg.TestPattern(width=320, height=240, duration=14, clock=False, video_bitrate_k=300)
        pub = subprocess.Popen(ffmpeg.publish_test_pattern_args(p, server.rtmp_url(key), ffmpeg_exe),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wait_for(lambda: status(f"{edge}/hls/edge/source.m3u8") == 200
                 and len(m3u8.loads(httpx.get(f"{edge}/hls/edge/source.m3u8").text).segments) >= 2, 30,
                 what="the playlist through the edge")  # fmt: skip
        pl = m3u8.loads(httpx.get(f"{edge}/hls/edge/source.m3u8").text)
        seg, init = pl.segments[0].uri, pl.segments[0].init_section.uri
        first = httpx.get(f"{edge}/hls/edge/{seg}")
        second = httpx.get(f"{edge}/hls/edge/{seg}")
        assert first.status_code == second.status_code == 200 and first.content == second.content
        assert second.headers["x-cache-status"] == "HIT"
        rep = decode_segment(seg, httpx.get(f"{edge}/hls/edge/{init}").content, second.content)
        assert not rep.errors and rep.video_pts  # playable through the edge
        # playlists stay fresh: within a couple of seconds the edge lists newer segments
        before = len(pl.segments)
        wait_for(lambda: len(m3u8.loads(httpx.get(f"{edge}/hls/edge/source.m3u8").text).segments) > before, 6,
                 what="a newer playlist through the edge")  # fmt: skip
        # one origin stops: the edge keeps serving new (uncached) objects from the other
        origin.send_signal(signal.SIGTERM)
        origin.wait(10)
        for _ in range(3):
            time.sleep(2.1)
            fresh = m3u8.loads(httpx.get(f"{edge}/hls/edge/source.m3u8").text)
            last = httpx.get(f"{edge}/hls/edge/{fresh.segments[-1].uri}")
            assert last.status_code == 200 and len(last.content) > 0
        pub.wait(30)
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(10)
        if origin.poll() is None:
            origin.kill()
            origin.wait()
        server.stop()
