"""Broadcast lifecycle: reconnects inside and outside the grace period, a SIGKILLed
server that comes back, retention policies, recording switched off."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
import m3u8
import pytest

from tests.conftest import TidecastServer, start_server, wait_for
from tests.e2e.media_check import decode_segment
from tests.e2e.watch import whole_playlist
from tidecast import ffmpeg

pytestmark = pytest.mark.e2e


def publish(server: TidecastServer, key: str, seconds: float, exe: str) -> None:
    p = ffmpeg.TestPattern(width=320, height=240, duration=seconds, clock=False, video_bitrate_k=300)
    subprocess.run(ffmpeg.publish_test_pattern_args(p, server.rtmp_url(key), exe), check=True,
                   timeout=seconds + 30, capture_output=True)  # fmt: skip


def broadcasts(server: TidecastServer, stream: str) -> list[dict[str, object]]:
    return httpx.get(f"{server.http}/api/v1/broadcasts", params={"stream": stream}).json()  # type: ignore[no-any-return]


def vod_media(server: TidecastServer, b: dict[str, object], rendition: str = "source") -> m3u8.M3U8:
    base = str(b["hls_url"]).rsplit("/", 1)[0]
    return whole_playlist(httpx.get(f"{server.http}{base}/{rendition}.m3u8").text)


def test_reconnect_inside_and_after_the_grace_period(tmp_path: Path, ffmpeg_exe: str) -> None:
    server = start_server(tmp_path / "data", "--reconnect-grace", "6")
    try:
        key = server.create_stream("re")
        publish(server, key, 5, ffmpeg_exe)
        time.sleep(1)  # well inside the grace period
        publish(server, key, 5, ffmpeg_exe)
        wait_for(lambda: len(broadcasts(server, "re")) == 1 and broadcasts(server, "re")[0]["vod"], 20,
                 what="one finished broadcast")  # fmt: skip
        b = broadcasts(server, "re")[0]
        assert b["parts"] == 2 and abs(float(b["duration"]) - 10) <= 2.5  # type: ignore[arg-type]
        pl = vod_media(server, b)
        disc = [i for i, s in enumerate(pl.segments) if s.discontinuity]
        assert len(disc) == 1 and 0 < disc[0] < len(pl.segments)
        # playable across the discontinuity: the segments on both sides decode with their init
        base = f"{server.http}{str(b['hls_url']).rsplit('/', 1)[0]}"
        for seg in pl.segments[disc[0] - 1 : disc[0] + 1]:
            init = httpx.get(f"{base}/{seg.init_section.uri}").content
            rep = decode_segment(seg.uri, init, httpx.get(f"{base}/{seg.uri}").content)
            assert not rep.errors and rep.first_video_keyframe and rep.video_pts
        # after the grace period: a second broadcast
        time.sleep(7)
        publish(server, key, 4, ffmpeg_exe)
        wait_for(lambda: len(broadcasts(server, "re")) == 2 and all(x["vod"] for x in broadcasts(server, "re")),
                 20, what="two finished broadcasts")  # fmt: skip
    finally:
        server.stop()


def test_sigkill_mid_broadcast_then_restart(tmp_path: Path, ffmpeg_exe: str) -> None:
    data = tmp_path / "data"
    server = start_server(data, "--reconnect-grace", "2")
    key = server.create_stream("crash")
    p = ffmpeg.TestPattern(width=320, height=240, duration=60, clock=False, video_bitrate_k=300)
    pub = subprocess.Popen(ffmpeg.publish_test_pattern_args(p, server.rtmp_url(key), ffmpeg_exe),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        url = f"{server.http}/hls/crash/source.m3u8"
        wait_for(lambda: httpx.get(url).status_code == 200 and len(whole_playlist(httpx.get(url).text).segments) >= 4,
                 30, what="four live segments")  # fmt: skip
        listed = [s.uri for s in whole_playlist(httpx.get(url).text).segments]
        server.stop(signal.SIGKILL)
    finally:
        pub.kill()
        pub.wait()
    again = start_server(data)
    try:
        wait_for(lambda: broadcasts(again, "crash") and broadcasts(again, "crash")[0]["vod"], 20,
                 what="the crashed broadcast to be recovered")  # fmt: skip
        b = broadcasts(again, "crash")[0]
        assert b["ended_at"] is not None and b["live"] is False
        vod = vod_media(again, b)
        assert vod.is_endlist and vod.playlist_type == "vod"
        broadcast_id = str(b["id"])
        recovered = [f"{broadcast_id}/{s.uri}" for s in vod.segments]
        missing = [u for u in listed if u not in recovered]
        assert not missing, f"listed before the kill but not in the VOD: {missing}"
        base = f"{again.http}{str(b['hls_url']).rsplit('/', 1)[0]}"
        for seg in vod.segments:
            rep = decode_segment(seg.uri, httpx.get(f"{base}/{seg.init_section.uri}").content,
                                 httpx.get(f"{base}/{seg.uri}").content)  # fmt: skip
            assert not rep.errors, seg.uri
        assert "was left open; closed and kept as VOD" in again.log()
    finally:
        again.stop()


def test_retention_and_recording_switch(tmp_path: Path, ffmpeg_exe: str) -> None:
    server = start_server(tmp_path / "data", "--reconnect-grace", "0")
    auth = {"authorization": f"Bearer {server.admin_token}"}
    try:
        key = server.create_stream("ret")
        for _ in range(3):
            publish(server, key, 3, ffmpeg_exe)
        wait_for(lambda: len([b for b in broadcasts(server, "ret") if b["vod"]]) == 3, 20, what="3 VODs")
        before = broadcasts(server, "ret")  # newest first
        api = f"{server.http}/api/v1/streams/ret/retention"
        assert httpx.get(api).json() == {"recording": True, "mode": "forever", "value": 0}
        assert httpx.put(api, json={"mode": "count", "value": 1}).status_code == 401
        assert httpx.put(api, json={"mode": "weekly", "value": 1}, headers=auth).status_code == 422
        assert httpx.put(api, json={"mode": "count", "value": 0}, headers=auth).status_code == 422
        assert httpx.put(api, json={"recording": True, "mode": "count", "value": 1}, headers=auth).status_code == 200
        deleted = httpx.post(f"{server.http}/api/v1/retention/run", headers=auth).json()["deleted"]
        assert sorted(deleted) == sorted(str(b["id"]) for b in before[1:])
        assert [b["id"] for b in broadcasts(server, "ret")] == [before[0]["id"]]
        media = server.data_dir / "media" / "hls" / "ret"
        for b in before[1:]:
            assert not (media / str(b["id"])).exists()
            assert httpx.get(f"{server.http}/api/v1/broadcasts/{b['id']}").status_code == 404
        assert (media / str(before[0]["id"])).is_dir()
        # a broadcast can be deleted by hand
        assert httpx.delete(f"{server.http}/api/v1/broadcasts/{before[0]['id']}").status_code == 401
        assert httpx.delete(f"{server.http}/api/v1/broadcasts/{before[0]['id']}", headers=auth).status_code == 204
        assert not (media / str(before[0]["id"])).exists()
        # recording off: live works, nothing is kept afterwards
        httpx.put(api, json={"recording": False, "mode": "forever", "value": 0}, headers=auth).raise_for_status()
        publish(server, key, 3, ffmpeg_exe)
        wait_for(lambda: len(broadcasts(server, "ret")) == 1 and broadcasts(server, "ret")[0]["ended_at"], 15,
                 what="the unrecorded broadcast to end")  # fmt: skip
        b = broadcasts(server, "ret")[0]
        wait_for(lambda: not (media / str(b["id"])).exists(), 10, what="its media to be removed")
        assert b["vod"] is False
    finally:
        server.stop()
