"""LL-HLS live through the real nginx edge (``tidecast edge-config``), published from a
source stamped with ``media.stamp``'s clock: a player that ignores parts (ffmpeg's
HLS demuxer, what ffprobe reads with) plays the LL playlists as whole segments,
continuous frame by frame; Chromium plays LL live for 60 s with no stall, the stamp
on screen advancing as the publisher sends, over blocking playlist reloads.
One server, edge and publisher for the module."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import av
import httpx
import m3u8
import pytest

from tests.conftest import TidecastServer, start_server, wait_for
from tests.edge.test_edge_ll import start_nginx, stop_nginx
from tidecast import ffmpeg
from tidecast.media import stamp

pytestmark = [pytest.mark.e2e, pytest.mark.heavy]

PLAY_SECONDS = 60
SOURCE_SECONDS = 120  # the browser's minute, start-ups and the whole-segment player


@dataclass
class LLLive:
    server: TidecastServer
    edge: str
    spawned: float  # when the publisher was started (epoch s)
    media_url: str  # the rendition's media playlist, through the edge


@pytest.fixture(scope="module")
def ll_live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLLive]:
    tmp = tmp_path_factory.mktemp("ll-live")
    source = tmp / "stamped.flv"
    pattern = ffmpeg.TestPattern(width=640, height=360, fps=30, duration=SOURCE_SECONDS, stamp="media",
                                 video_bitrate_k=1200, preset="ultrafast", font=ffmpeg.clock_font())  # fmt: skip
    subprocess.run(ffmpeg.render_test_pattern_args(pattern, str(source), ffmpeg.ffmpeg_exe(), zerolatency=True),
                   check=True, timeout=300)  # fmt: skip
    server = start_server(tmp / "data", env={"TIDECAST_LL_HLS": "1"})  # passthrough
    nginx, edge = start_nginx(tmp / "edge", server.http_port)
    pub: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: _ok(f"{edge}/api/v1/health"), 15, what="the nginx edge")
        key = server.create_stream("ll")
        spawned = time.time()
        pub = subprocess.Popen(ffmpeg.publish_file_args(str(source), server.rtmp_url(key), ffmpeg.ffmpeg_exe(),
                                                        like_a_camera=True),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wait_for(lambda: _ok(f"{edge}/hls/ll/master.m3u8"), 30, what="the master playlist")
        master = m3u8.loads(httpx.get(f"{edge}/hls/ll/master.m3u8").text)
        media_url = f"{edge}/hls/ll/{master.playlists[0].uri}"
        wait_for(
            lambda: httpx.get(media_url).text.count("#EXTINF") >= 2,
            30,
            what="two complete segments",
        )
        yield LLLive(server, edge, spawned, media_url)
    finally:
        if pub is not None:
            pub.kill()
            pub.wait()
        stop_nginx(nginx)
        server.stop()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def blocking_requests(server: TidecastServer) -> float:
    text = httpx.get(f"{server.http}/metrics", headers=server.admin, timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("tidecast_origin_blocking_requests_total{"))  # fmt: skip


def test_a_player_that_ignores_parts_plays_whole_segments(ll_live: LLLive) -> None:
    text = httpx.get(ll_live.media_url).text
    assert (
        "#EXT-X-PART:" in text and "#EXT-X-PRELOAD-HINT:" in text and "CAN-BLOCK-RELOAD=YES" in text
    )
    frames: list[tuple[int, int | None]] = []
    # ffmpeg's HLS demuxer knows no EXT-X-PART: it reads the listed segments, then reloads
    with av.open(
        ll_live.media_url, options={"rw_timeout": "10000000"}, timeout=(10, 10)
    ) as container:
        for frame in container.decode(video=0):
            y = frame.planes[0]
            assert frame.time is not None
            frames.append((round(frame.time * 1000), stamp.decode_luma(bytes(y), frame.width, frame.height,
                                                                       y.line_size)))  # fmt: skip
            if len(frames) >= 8 * 30:  # 8 s: past the segments listed when it opened
                break
    assert all(s is not None for _, s in frames), "a frame without a readable stamp"
    offsets = {pts - s for pts, s in frames if s is not None}
    assert max(offsets) - min(offsets) <= 1, (
        f"timestamps drift from the source's media time: {offsets}"
    )
    steps = {b[0] - a[0] for a, b in zip(frames, frames[1:], strict=False)}
    assert steps <= {33, 34}, f"a gap or an overlap between frames: steps {sorted(steps)}"


COLLECT_JS = """() => {
  window.__stamps = [];
  TidecastStamp.watch(document.getElementById('video'), (f) => window.__stamps.push([f.displayMs, f.value]));
}"""


def test_chromium_plays_ll_live_through_the_edge_without_a_stall(ll_live: LLLive) -> None:
    from tests.e2e.browser import chromium_page

    with chromium_page() as page:
        page.goto(f"{ll_live.edge}/watch/ll")  # type: ignore[attr-defined]
        page.wait_for_function("window.tidecastPlayer.state === 'playing'", timeout=60_000)  # type: ignore[attr-defined]
        page.add_script_tag(url=f"{ll_live.edge}/static/stamp.js")  # type: ignore[attr-defined]
        for value in (
            0,
            1,
            987_654_321,
            stamp.MODULUS - 1,
        ):  # the page reads stamps as media.stamp does
            cells = stamp.bits(value)
            assert (
                page.evaluate(
                    "l => TidecastStamp.decodeCells(l)", [235 if b else 16 for b in cells]
                )
                == value
            )  # type: ignore[attr-defined]
            cells[20] ^= 1
            assert (
                page.evaluate(
                    "l => TidecastStamp.decodeCells(l)", [235 if b else 16 for b in cells]
                )
                is None
            )  # type: ignore[attr-defined]
        page.evaluate(COLLECT_JS)  # type: ignore[attr-defined]
        blocking_before = blocking_requests(ll_live.server)
        samples: list[tuple[float, int | None]] = []
        for _ in range(PLAY_SECONDS):
            page.wait_for_timeout(1000)  # type: ignore[attr-defined]
            samples += [tuple(s) for s in page.evaluate("() => window.__stamps.splice(0)")]  # type: ignore[attr-defined, misc]
        player = page.evaluate("""() => ({ stats: window.tidecastPlayer.stats(), stalls: window.tidecastPlayer.stalls,
                                           bufferStalls: window.tidecastPlayer.bufferStalls, jumps: window.tidecastPlayer.liveJumps })""")  # type: ignore[attr-defined]
    stats = player["stats"]
    assert player["stalls"] == [] and stats["stalledMs"] == 0 and player["bufferStalls"] == 0, (
        player
    )
    assert (
        stats["lowLatency"] is True and stats["targetLatencyS"] == 1.0
    )  # PART-HOLD-BACK: 3 parts of 1/3 s
    assert (
        blocking_requests(ll_live.server) > blocking_before
    )  # hls.js reloads by _HLS_msn through the edge
    values = [v for _, v in samples if v is not None]
    assert len(samples) >= PLAY_SECONDS * 30 * 0.8 and len(values) >= 0.98 * len(samples)
    assert values == sorted(values), "the picture went back in time"
    advance = (values[-1] - values[0]) / 1000
    assert advance >= 0.9 * PLAY_SECONDS, (
        f"the stamp advanced {advance:.1f} s in {PLAY_SECONDS} s of playback"
    )
    # measured, not asserted: from the publisher's start (its own start-up included)
    g2g = sorted(
        (shown - (ll_live.spawned * 1000 + v)) / 1000 for shown, v in samples if v is not None
    )
    print(f"\nLL passthrough through the edge, {len(g2g)} frames: g2g p50 {statistics.median(g2g):.2f} s, "
          f"p95 {g2g[int(0.95 * len(g2g))]:.2f} s (from the publisher's spawn); "
          f"hls.js latency {stats['latencyS']} s, target {stats['targetLatencyS']} s, "
          f"jumps back to live {player['jumps']}")  # fmt: skip
