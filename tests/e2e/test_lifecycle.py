"""Graceful lifecycle: Ctrl-C while a publisher is live closes it, finishes and lists
the last segment, ends the playlists, and leaves no ffmpeg behind; a publisher that
reconnects continues the same playlist after EXT-X-DISCONTINUITY."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import m3u8
import pytest

from tests.conftest import start_server, wait_for
from tests.e2e.media_check import decode_segment
from tests.e2e.watch import whole_playlist

pytestmark = pytest.mark.e2e


def ffmpeg_children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # the process went away while we looked
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"ffmpeg" in cmd:
            out.append(int(entry.name))
    return out


def media_playlist(http: str, name: str) -> m3u8.M3U8 | None:
    r = httpx.get(f"{http}/hls/{name}/source.m3u8")
    return whole_playlist(r.text) if r.status_code == 200 else None


def test_ctrl_c_while_live(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", "--reconnect-grace", "30")
    key = server.create_stream("life")
    publisher = subprocess.Popen(
        [sys.executable, "-m", "tidecast", "publish", server.rtmp_url(key), "--size", "640x360"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(lambda: (pl := media_playlist(server.http, "life")) is not None and len(pl.segments) >= 2,
                 20, what="two segments")  # fmt: skip
        assert httpx.get(f"{server.http}/api/v1/streams/life").json()["live"] is True
        wait_for(lambda: ffmpeg_children_of(publisher.pid) != [], 5, what="the publisher's ffmpeg")
        listed_before = len(media_playlist(server.http, "life").segments)  # type: ignore[union-attr]
        rc = server.stop(signal.SIGINT, timeout=20)
        assert rc == 0, server.log()
        log = server.log()
        assert "shutting down" in log and "server shutdown" in log
        # the last, partial segment was finished, stored and listed; the playlist ended
        text = (server.data_dir / "media/hls/life/source.m3u8").read_text()
        pl = whole_playlist(text)
        assert pl.is_endlist
        assert len(pl.segments) > listed_before
        last = pl.segments[-1]
        base = server.data_dir / "media/hls/life"
        rep = decode_segment(last.uri, (base / pl.segment_map[0].uri).read_bytes(), (base / last.uri).read_bytes())
        assert not rep.errors and rep.video_pts
        # the publisher noticed and exits on its own; its ffmpeg is not orphaned
        publisher.wait(timeout=20)
        assert ffmpeg_children_of(publisher.pid) == []
    finally:
        if publisher.poll() is None:
            publisher.kill()
            publisher.wait()
        server.stop(signal.SIGKILL)


def test_tidecast_publish_ctrl_c_stops_its_ffmpeg(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    key = server.create_stream("pub")
    publisher = subprocess.Popen(
        [sys.executable, "-m", "tidecast", "publish", server.rtmp_url(key), "--size", "320x240"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(lambda: ffmpeg_children_of(publisher.pid) != [], 10, what="ffmpeg to start")
        children = ffmpeg_children_of(publisher.pid)
        wait_for(lambda: httpx.get(f"{server.http}/api/v1/streams/pub").json()["live"], 15, what="live")
        publisher.send_signal(signal.SIGINT)
        assert publisher.wait(timeout=15) == 0
        for pid in children:
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        wait_for(lambda: not httpx.get(f"{server.http}/api/v1/streams/pub").json()["live"], 10, what="offline")
    finally:
        if publisher.poll() is None:
            publisher.kill()
            publisher.wait()
        server.stop()


def test_reconnect_continues_the_playlist_after_a_discontinuity(tmp_path: Path, ffmpeg_exe: str) -> None:
    from tidecast import ffmpeg

    server = start_server(tmp_path / "data", "--reconnect-grace", "20", "--playlist-window", "20")
    key = server.create_stream("re")
    pattern = ffmpeg.TestPattern(width=320, height=240, duration=5, clock=False, video_bitrate_k=300)
    try:
        for _ in range(2):
            subprocess.run(ffmpeg.publish_test_pattern_args(pattern, server.rtmp_url(key), ffmpeg_exe),
                           check=True, timeout=30, capture_output=True)  # fmt: skip
            wait_for(lambda: not httpx.get(f"{server.http}/api/v1/streams/re").json()["live"], 10, what="offline")
        pl = media_playlist(server.http, "re")
        assert pl is not None and not pl.is_endlist  # still inside the grace period
        discontinuities = [i for i, s in enumerate(pl.segments) if s.discontinuity]
        assert len(discontinuities) == 1 and discontinuities[0] > 0
        first_map = pl.segments[0].init_section.uri
        second_map = pl.segments[discontinuities[0]].init_section.uri
        assert first_map != second_map  # a new broadcast has its own init segment
        assert os.path.isfile(server.data_dir / "media/hls/re" / second_map)
    finally:
        server.stop()
