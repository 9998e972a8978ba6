"""The live path end to end: ffmpeg publishes 20 s of 1080p30 over RTMP to a real
``tidecast serve`` process; a headless Chromium watches it; then every stored
segment is decoded and checked for completeness and timestamp continuity."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import TidecastServer, start_server, wait_for
from tests.e2e.media_check import assert_audio_continuous, assert_video_continuous, fetch_segments
from tests.e2e.watch import whole_playlist
from tidecast import ffmpeg

pytestmark = pytest.mark.e2e

DURATION = 20.0
FPS = 30


@dataclass
class LiveRun:
    server: TidecastServer
    key: str
    source: Path
    exe: str
    publisher: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    def ensure_publishing(self) -> None:
        if self.publisher is None:
            args = ffmpeg.publish_file_args(str(self.source), self.server.rtmp_url(self.key), self.exe)
            self.publisher = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.started_at = time.monotonic()

    def wait_published(self) -> str:
        self.ensure_publishing()
        assert self.publisher is not None
        _, err = self.publisher.communicate(timeout=DURATION + 30)
        assert self.publisher.returncode == 0, err.decode(errors="replace")
        return err.decode(errors="replace")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    tmp = tmp_path_factory.mktemp("live")
    exe = ffmpeg.ffmpeg_exe()
    source = tmp / "source.flv"
    pattern = ffmpeg.TestPattern(
        width=1920, height=1080, fps=FPS, duration=DURATION, video_bitrate_k=4000,
        font=ffmpeg.clock_font(),
    )  # fmt: skip
    subprocess.run(ffmpeg.render_test_pattern_args(pattern, str(source), exe), check=True, timeout=120)
    server = start_server(tmp / "data", "--playlist-window", "20", "--reconnect-grace", "1")
    run = LiveRun(server, server.create_stream("e2e"), source, exe)
    yield run
    if run.publisher is not None and run.publisher.poll() is None:
        run.publisher.kill()
        run.publisher.wait()
    server.stop()


@pytest.mark.browser
def test_watch_page_goes_from_offline_to_playing(live: LiveRun) -> None:
    from tests.e2e.browser import chromium_page

    with chromium_page() as page:
        page.goto(f"{live.server.http}/watch/e2e")
        page.wait_for_function("window.tidecastPlayer !== undefined")
        assert page.evaluate("window.tidecastPlayer.state") == "offline"
        assert page.is_visible("#offline")
        live.ensure_publishing()  # the page is not reloaded: it must notice by itself
        page.wait_for_function("window.tidecastPlayer.state === 'playing'", timeout=20_000)
        t0 = page.evaluate("document.getElementById('video').currentTime")
        last = t0
        for _ in range(20):  # up to 10 s of wall clock
            page.wait_for_timeout(500)
            now = page.evaluate("document.getElementById('video').currentTime")
            assert now >= last, "playback went backwards"
            last = now
            if now - t0 >= 8.0:
                break
        stats = page.evaluate("window.tidecastPlayer.stats()")
        errors = page.evaluate("window.tidecastPlayer.errors")
        assert last - t0 >= 8.0, f"played {last - t0:.1f} s; stats {stats}; errors {errors}"
        assert not page.is_visible("#offline")
        # the quality menu offers Auto plus the rendition(s)
        options = page.eval_on_selector_all("#quality option", "os => os.map(o => o.textContent)")
        assert options[0].startswith("Auto") and len(options) >= 2


def test_playlists_parse_and_follow_rfc8216(live: LiveRun) -> None:
    live.ensure_publishing()
    base = f"{live.server.http}/hls/e2e"
    wait_for(lambda: httpx.get(f"{base}/master.m3u8").status_code == 200, 15, what="master playlist")
    master = whole_playlist(httpx.get(f"{base}/master.m3u8").text, uri=f"{base}/master.m3u8")
    assert master.is_variant and len(master.playlists) == 1
    info = master.playlists[0].stream_info
    assert info.resolution == (1920, 1080)
    assert info.codecs.startswith("avc1.") and "mp4a.40.2" in info.codecs
    assert info.bandwidth >= info.average_bandwidth > 500_000
    seen_sequences: list[int] = []
    media_url = f"{base}/{master.playlists[0].uri}"
    for _ in range(4):
        r = httpx.get(media_url)
        assert r.headers["content-type"] == "application/vnd.apple.mpegurl"
        pl = whole_playlist(r.text, uri=media_url)
        assert pl.version is not None and pl.version >= 6
        assert pl.segment_map and pl.segment_map[0].uri
        for seg in pl.segments:
            assert round(seg.duration) <= pl.target_duration
            assert seg.program_date_time is not None
            # the playlist only lists segments that are fully stored
            assert httpx.head(f"{base}/{seg.uri}").status_code == 200
        seen_sequences.append(pl.media_sequence + len(pl.segments))
        time.sleep(2.2)
    assert seen_sequences == sorted(seen_sequences) and seen_sequences[-1] > seen_sequences[0]


def test_every_segment_is_complete_and_continuous(live: LiveRun) -> None:
    live.wait_published()
    base = f"{live.server.http}/hls/e2e"
    media_url = f"{base}/source.m3u8"
    wait_for(lambda: "#EXT-X-ENDLIST" in httpx.get(media_url).text, 15, what="EXT-X-ENDLIST")
    pl = whole_playlist(httpx.get(media_url).text, uri=media_url)
    assert pl.media_sequence == 0, "the 20-segment window holds the whole broadcast"
    fetched = fetch_segments(base, pl)
    reports = [(seg, rep) for seg, _, rep in fetched]
    for seg, rep in reports:
        assert (rep.width, rep.height) == (1920, 1080) and rep.audio, seg.uri
    assert_video_continuous([r for _, r in reports], FPS)
    assert_audio_continuous([r for _, r in reports])
    frame = 1 / FPS
    total_frames = sum(len(r.video_pts) for _, r in reports)
    listed = sum(s.duration for s in pl.segments)
    assert abs(listed - DURATION) <= 2.0
    assert abs(total_frames - DURATION * FPS) <= FPS * 2
    # EXTINF matches what is in the segment
    for seg, rep in reports[:-1]:
        assert abs(seg.duration - (rep.video_end - rep.video_start + frame)) <= frame
