"""Recordings end to end: live DVR while the broadcast runs, then VOD (duration,
playback start to end and seeking in Chromium), MP4 downloads (whole and a range),
and a clip that plays on its own."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import httpx
import pytest

from tests.conftest import TidecastServer, start_server, wait_for
from tests.e2e.test_abr import publish_file, render
from tests.e2e.watch import whole_playlist

pytestmark = [pytest.mark.e2e]
SECONDS = 40


@dataclass
class Run:
    server: TidecastServer
    publisher: subprocess.Popen[bytes]
    started: float

    def broadcast(self) -> dict[str, object]:
        bs = httpx.get(f"{self.server.http}/api/v1/broadcasts", params={"stream": "rec"}).json()
        assert len(bs) == 1, bs
        return bs[0]  # type: ignore[no-any-return]

    def vod(self) -> dict[str, object]:
        assert self.publisher.wait(timeout=SECONDS + 30) == 0
        wait_for(lambda: self.broadcast()["vod"], 30, what="the broadcast to become VOD")
        return self.broadcast()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("rec")
    source = render(tmp, 640, 360, SECONDS)
    server = start_server(tmp / "data", "--reconnect-grace", "1",
                          env={"TIDECAST_LADDER": "360:700,240:300", "TIDECAST_PASSTHROUGH": "0"})  # fmt: skip
    key = server.create_stream("rec")
    pub = publish_file(server, key, source)
    yield Run(server, pub, time.monotonic())
    if pub.poll() is None:
        pub.kill()
        pub.wait()
    server.stop()


@pytest.mark.browser
def test_dvr_seek_back_and_go_live(run: Run) -> None:
    from tests.e2e.browser import chromium_page

    with chromium_page() as page:
        page.goto(f"{run.server.http}/watch/rec")
        page.wait_for_function("window.tidecastPlayer.state === 'playing'", timeout=30_000)
        # wait until 20 s back is inside the recorded window
        wait_for(lambda: page.evaluate("document.getElementById('video').seekable.end(0) - "
                                       "document.getElementById('video').seekable.start(0)") > 29,
                 40, interval=0.5, what="29 s of DVR window")  # fmt: skip
        edge = page.evaluate("window.tidecastPlayer.hls.liveSyncPosition")
        start = page.evaluate("document.getElementById('video').seekable.start(0)")
        assert edge - 20 > start  # 20 s back is inside the recorded window
        page.evaluate(f"document.getElementById('video').currentTime = {edge - 20}")
        page.wait_for_timeout(1500)
        t0 = page.evaluate("document.getElementById('video').currentTime")
        assert edge - 23 < t0 < edge - 15, f"seek back landed at {t0} (edge {edge})"
        page.wait_for_timeout(2000)
        assert page.evaluate("document.getElementById('video').currentTime") > t0 + 1, "not playing after the seek"
        page.wait_for_selector("#go-live", state="visible", timeout=5_000)
        page.click("#go-live")
        page.wait_for_timeout(1500)
        behind = page.evaluate(
            "window.tidecastPlayer.hls.liveSyncPosition - document.getElementById('video').currentTime"
        )
        # within two segments of where the player keeps the live edge
        assert behind < 4.0, f"{behind:.1f} s behind the live position after Go live"
        live_edge_gap = page.evaluate(
            "(() => { const v = document.getElementById('video'); return v.seekable.end(0) - v.currentTime; })()"
        )
        assert live_edge_gap < 3 * 2 + 4.0  # the player's target distance + two segments


def test_vod_duration_and_playlists(run: Run) -> None:
    b = run.vod()
    assert abs(float(b["duration"]) - SECONDS) <= 2.0, b  # type: ignore[arg-type]
    assert b["ended_at"] and b["parts"] == 1 and set(b["renditions"]) == {"360p", "240p", "audio"}  # type: ignore[arg-type]
    master = whole_playlist(httpx.get(f"{run.server.http}{b['hls_url']}").text)
    assert {p.uri for p in master.playlists} == {"360p.m3u8", "240p.m3u8"}
    base = str(b["hls_url"]).rsplit("/", 1)[0]
    for p in master.playlists:
        pl = whole_playlist(httpx.get(f"{run.server.http}{base}/{p.uri}").text)
        assert pl.playlist_type == "vod" and pl.is_endlist
        assert abs(sum(s.duration for s in pl.segments) - SECONDS) <= 2.0
    poster = httpx.get(f"{run.server.http}{b['poster_url']}")
    assert poster.status_code == 200 and poster.content[:2] == b"\xff\xd8"  # a JPEG
    page = httpx.get(f"{run.server.http}/videos")
    assert page.status_code == 200


@pytest.mark.browser
def test_vod_plays_start_to_end_and_seeks(run: Run) -> None:
    from tests.e2e.browser import chromium_page

    b = run.vod()
    with chromium_page() as page:
        page.goto(f"{run.server.http}{b['page_url']}")
        page.wait_for_function("window.tidecastPlayer.state === 'playing'", timeout=20_000)
        duration = page.evaluate("document.getElementById('video').duration")
        assert abs(duration - SECONDS) <= 2.0
        assert page.evaluate("document.getElementById('video').currentTime") < 3  # from the start
        page.evaluate(f"document.getElementById('video').currentTime = {duration / 2}")
        page.wait_for_timeout(2500)
        mid = page.evaluate("document.getElementById('video').currentTime")
        assert duration / 2 + 0.5 < mid < duration / 2 + 4, f"after seeking to the middle: {mid}"
        page.evaluate(f"document.getElementById('video').currentTime = {duration - 3}")
        page.wait_for_function("window.tidecastPlayer.state === 'ended'", timeout=15_000)
        assert page.evaluate("window.tidecastPlayer.stalls.filter(s => s.ms > 1000).length") == 0


def probe(path: Path) -> tuple[float, list[str]]:
    with av.open(str(path)) as c:
        duration = float(c.duration or 0) / av.time_base
        kinds = sorted(s.type for s in c.streams)
    return duration, kinds


def test_mp4_downloads(run: Run, tmp_path: Path, ffmpeg_exe: str) -> None:
    b = run.vod()
    for params, expected in (({}, SECONDS), ({"start": 10, "end": 20, "rendition": "240p"}, 10)):
        r = httpx.get(f"{run.server.http}{b['download_url']}", params=params, timeout=60)
        assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
        out = tmp_path / f"dl-{len(params)}.mp4"
        out.write_bytes(r.content)
        check = subprocess.run([ffmpeg_exe, "-v", "error", "-i", str(out), "-f", "null", "-"],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        assert check.returncode == 0 and not check.stderr.strip(), check.stderr
        duration, kinds = probe(out)
        assert kinds == ["audio", "video"]
        assert abs(duration - expected) <= 2.0, (params, duration)
    bad = httpx.get(f"{run.server.http}{b['download_url']}", params={"rendition": "4320p"})
    assert bad.status_code == 422 and "no rendition" in bad.text
    bad = httpx.get(f"{run.server.http}{b['download_url']}", params={"start": 500, "end": 600})
    assert bad.status_code == 422


@pytest.mark.browser
def test_clip_plays_on_its_own(run: Run) -> None:
    from tests.e2e.browser import chromium_page

    b = run.vod()
    auth = {"authorization": f"Bearer {run.server.admin_token}"}
    api = f"{run.server.http}/api/v1/clips"
    assert httpx.post(api, json={"broadcast": b["id"], "start": 10, "end": 16}).status_code == 401
    assert httpx.post(api, json={"broadcast": b["id"], "start": 16, "end": 10}, headers=auth).status_code == 422
    assert httpx.post(api, json={"broadcast": "nope", "start": 1, "end": 2}, headers=auth).status_code == 404
    r = httpx.post(api, json={"broadcast": b["id"], "start": 10, "end": 16, "title": "the good bit"}, headers=auth)
    assert r.status_code == 201, r.text
    clip = r.json()
    assert abs(clip["duration"] - 6) <= 2.0
    assert clip["id"] in [c["id"] for c in httpx.get(api).json()]
    pl = whole_playlist(httpx.get(f"{run.server.http}{clip['hls_url'].replace('master', '360p')}").text)
    assert pl.is_endlist and abs(sum(s.duration for s in pl.segments) - clip["duration"]) < 0.01
    with chromium_page() as page:
        page.goto(f"{run.server.http}{clip['page_url']}")
        page.wait_for_function("window.tidecastPlayer.state === 'playing'", timeout=20_000)
        duration = page.evaluate("document.getElementById('video').duration")
        assert abs(duration - clip["duration"]) <= 1.0
        page.wait_for_function("window.tidecastPlayer.state === 'ended'", timeout=20_000)
