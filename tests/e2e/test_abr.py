"""Segment-parallel ABR: every rung present, decodable, at its resolution and
bitrate, continuous across independently transcoded segments, audio in sync —
also when jobs finish out of order, when a worker is SIGKILLed mid-job, and
when a job always fails (dead-lettered, EXT-X-GAP, the stream goes on)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import m3u8
import pytest

from tests.conftest import TidecastServer, start_server, wait_for
from tests.e2e.media_check import (
    AAC_FRAME,
    SegmentReport,
    assert_audio_continuous,
    assert_video_continuous,
    fetch_segments,
)
from tests.e2e.watch import whole_playlist
from tidecast import ffmpeg
from tidecast.transcode.ladder import DEFAULT_LADDER

pytestmark = [pytest.mark.e2e, pytest.mark.heavy]
FPS = 30
# these tests want every rung of every segment: no backpressure (tests/e2e/test_backpressure.py)
NO_SKIP = "600"


def render(tmp: Path, w: int, h: int, seconds: float) -> Path:
    path = tmp / f"src-{w}x{h}-{seconds:g}.flv"
    if not path.exists():
        # the source's own encoding only has to be quick: the ladder is what is tested
        p = ffmpeg.TestPattern(width=w, height=h, fps=FPS, duration=seconds, video_bitrate_k=5000,
                               font=ffmpeg.clock_font(), preset="ultrafast")  # fmt: skip
        subprocess.run(ffmpeg.render_test_pattern_args(p, str(path), ffmpeg.ffmpeg_exe()), check=True, timeout=180)
    return path


def publish_file(server: TidecastServer, key: str, path: Path) -> subprocess.Popen[bytes]:
    args = ffmpeg.publish_file_args(str(path), server.rtmp_url(key), ffmpeg.ffmpeg_exe())
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def ended_playlists(server: TidecastServer, name: str, timeout: float = 90) -> tuple[m3u8.M3U8, dict[str, m3u8.M3U8]]:
    base = f"{server.http}/hls/{name}"

    def all_ended() -> bool:
        r = httpx.get(f"{base}/master.m3u8")
        if r.status_code != 200:
            return False
        master = whole_playlist(r.text)
        return all("#EXT-X-ENDLIST" in httpx.get(f"{base}/{p.uri}").text for p in master.playlists)

    wait_for(all_ended, timeout, interval=0.5, what="every rendition playlist to end")
    master = whole_playlist(httpx.get(f"{base}/master.m3u8").text)
    return master, {p.uri.removesuffix(".m3u8"): whole_playlist(httpx.get(f"{base}/{p.uri}").text) for p in master.playlists}


def check_rendition(server: TidecastServer, name: str, rendition: str, pl: m3u8.M3U8, *, height: int,
                    kbps: int | None) -> list[SegmentReport]:  # fmt: skip
    """``kbps``: the rung's budget (None: the source, at the publisher's bitrate)."""
    base = f"{server.http}/hls/{name}"
    assert pl.media_sequence == 0
    seqs = [int(s.uri.rsplit("/", 1)[1].split(".")[0]) for s in pl.segments]
    assert seqs == list(range(len(seqs))), f"{rendition}: segments missing or out of order: {seqs}"
    maps = {s.init_section.uri for s in pl.segments}
    assert len(maps) == 1, f"{rendition}: expected one init segment, got {maps}"
    assert not any(s.discontinuity for s in pl.segments)
    reports = []
    for seg, data, rep in fetch_segments(base, pl):
        assert rep.height == height, f"{seg.uri}: height {rep.height} != {height}"
        if kbps is not None and seg is not pl.segments[-1]:  # the last one may be short
            video_kbps = len(data) * 8 / seg.duration / 1000  # video-only segments
            assert abs(video_kbps - kbps) <= 0.25 * kbps, f"{seg.uri}: {video_kbps:.0f} kb/s vs {kbps}"
        reports.append(rep)
    assert_video_continuous(reports, FPS)
    return reports




def check_audio(server: TidecastServer, name: str, pl: m3u8.M3U8) -> list[SegmentReport]:
    """The shared audio rendition: complete, continuous, sample-exact."""
    base = f"{server.http}/hls/{name}"
    reports = [rep for _, _, rep in fetch_segments(base, pl, video=False)]
    assert all(r.audio and not r.video_pts for r in reports)
    assert_audio_continuous(reports)
    return reports


def check_sync(video: list[SegmentReport], audio: list[SegmentReport]) -> None:
    """At every segment boundary the audio starts with the picture (<= 1 audio frame)."""
    assert len(video) == len(audio)
    for v, a in zip(video, audio, strict=True):
        drift = a.audio_start - v.video_start
        assert abs(drift) <= AAC_FRAME + 1e-3, f"{v.name}: A/V drift {drift * 1000:.1f} ms"


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("abr-media")


def test_1080p_source_gets_every_fitting_rung_and_stands_in_for_the_top_one(media: Path, tmp_path: Path) -> None:
    """The default ladder on its defaults (passthrough on): the 1080p source is listed in
    place of the 1080p rung, with its own audio; every rung below is encoded."""
    source = render(media, 1920, 1080, 30)
    server = start_server(tmp_path / "data", "--reconnect-grace", "0", "--playlist-window", "40",
                          env={"TIDECAST_LADDER": "default", "TIDECAST_TRANSCODE_LAG_THRESHOLD": NO_SKIP,
                               "TIDECAST_X264_PRESET": "superfast"})  # fmt: skip
    try:
        key = server.create_stream("abr")
        pub = publish_file(server, key, source)
        assert pub.wait(timeout=90) == 0
        master, playlists = ended_playlists(server, "abr")
        expected = [r for r in DEFAULT_LADDER if r.height < 1080]
        assert sorted(playlists) == sorted(["source", *(r.name for r in expected)])
        audio = whole_playlist(httpx.get(f"{server.http}/hls/abr/audio.m3u8").text)
        audio_reports = check_audio(server, "abr", audio)
        assert master.media[0].type == "AUDIO" and master.media[0].uri == "audio.m3u8"
        by_uri = {p.uri: p for p in master.playlists}
        for rung in expected:
            info = by_uri[f"{rung.name}.m3u8"].stream_info
            assert info.resolution[1] == rung.height
            assert info.codecs.startswith("avc1.") and info.codecs.endswith(",mp4a.40.2")
            assert info.frame_rate is not None and abs(info.frame_rate - FPS) < 0.1
            assert info.bandwidth >= info.average_bandwidth
            reps = check_rendition(server, "abr", rung.name, playlists[rung.name], height=rung.height, kbps=rung.video_kbps)
            check_sync(reps, audio_reports)
            assert info.audio == "audio"
        src = by_uri["source.m3u8"].stream_info
        assert src.resolution == (1920, 1080) and src.audio == "audio"
        assert src.codecs.startswith("avc1.") and src.codecs.count("mp4a") == 1  # its own audio, muxed in
        reps = check_rendition(server, "abr", "source", playlists["source"], height=1080, kbps=None)
        check_sync(reps, audio_reports)
        counts = {n: len(p.segments) for n, p in playlists.items()}
        assert len(set(counts.values())) == 1, counts
        assert abs(sum(s.duration for s in playlists["source"].segments) - 30) <= 2
        assert not list((server.data_dir / "media").rglob("1080p")), "a 1080p rung was encoded too"
        status = httpx.get(f"{server.http}/api/v1/transcode", headers=server.admin).json()
        assert status["dead_lettered"] == 0 and status["jobs_done"] >= 14
    finally:
        server.stop()


def test_out_of_order_and_killed_worker_lose_nothing(media: Path, tmp_path: Path) -> None:
    source = render(media, 1280, 720, 24)
    server = start_server(
        tmp_path / "data", "--reconnect-grace", "0", "--playlist-window", "40",
        env={"TIDECAST_LADDER": "720:2000,360:700", "TIDECAST_WORKERS": "2", "TIDECAST_PASSTHROUGH": "0",
             "TIDECAST_FAULT_DELAY": "2:5",  # segment 2 finishes long after 3 and 4
             "TIDECAST_TRANSCODE_LAG_THRESHOLD": NO_SKIP},
    )  # fmt: skip
    try:
        key = server.create_stream("chaos")
        pub = publish_file(server, key, source)
        # SIGKILL a worker while it is in the middle of a job (not the delayed one)
        killed = None
        deadline = time.monotonic() + 40
        while killed is None and time.monotonic() < deadline:
            for w in httpx.get(f"{server.http}/api/v1/transcode", headers=server.admin).json()["workers"]:
                if w["job"] and w["job"].endswith(("#5", "#6", "#7")):
                    os.kill(w["pid"], signal.SIGKILL)
                    killed = w
                    break
            time.sleep(0.05)
        assert killed is not None, "never saw a worker busy with segment 5-7"
        assert pub.wait(timeout=60) == 0
        master, playlists = ended_playlists(server, "chaos")
        assert sorted(playlists) == ["360p", "720p"]
        audio = check_audio(server, "chaos", whole_playlist(httpx.get(f"{server.http}/hls/chaos/audio.m3u8").text))
        for name, height, kbps in (("720p", 720, 2000), ("360p", 360, 700)):
            check_sync(check_rendition(server, "chaos", name, playlists[name], height=height, kbps=kbps), audio)
        status = httpx.get(f"{server.http}/api/v1/transcode", headers=server.admin).json()
        assert status["worker_restarts"] >= 1 and status["retries"] >= 1
        assert status["dead_lettered"] == 0
        assert killed["pid"] not in [w["pid"] for w in status["workers"]]
        log = server.log()
        assert "died with exit code -9" in log
    finally:
        server.stop()


def test_a_job_that_always_fails_becomes_a_gap(media: Path, tmp_path: Path) -> None:
    source = render(media, 854, 480, 16)
    server = start_server(
        tmp_path / "data", "--reconnect-grace", "0", "--playlist-window", "40",
        env={"TIDECAST_LADDER": "default", "TIDECAST_FAULT_FAIL": "3", "TIDECAST_TRANSCODE_ATTEMPTS": "3",
             "TIDECAST_PASSTHROUGH": "0",  # the 480p rung is encoded: it fails, and heals
             "TIDECAST_FAULT_HEAL_FAIL": "3",  # its heal job fails too: it cannot be made at all
             "TIDECAST_SOURCE_RENDITION": "1", "TIDECAST_TRANSCODE_LAG_THRESHOLD": NO_SKIP},
    )  # fmt: skip
    try:
        key = server.create_stream("gap")
        pub = publish_file(server, key, source)
        assert pub.wait(timeout=60) == 0
        master, playlists = ended_playlists(server, "gap")
        # a 480p source: no upscaled rungs; the untouched source is offered too
        assert sorted(playlists) == ["240p", "480p", "source"]
        assert all(p.stream_info.resolution[1] <= 480 for p in master.playlists)
        source_info = next(p.stream_info for p in master.playlists if p.uri == "source.m3u8")
        assert source_info.codecs.count("mp4a") == 1 and source_info.audio == "audio"
        assert not any("#EXT-X-GAP" in s.dumps(None) for s in playlists.pop("source").segments)
        for name, pl in playlists.items():
            gaps = [i for i, s in enumerate(pl.segments) if "#EXT-X-GAP" in s.dumps(None)]
            assert gaps == [3], f"{name}: gaps at {gaps}"
            assert len(pl.segments) >= 7, "the stream went on after the gap"
        status = httpx.get(f"{server.http}/api/v1/transcode", headers=server.admin).json()
        assert status["dead_lettered"] == 1
        assert status["retries"] == 2
        assert "gap#3 dead-lettered after 3 attempts" in server.log()
        wait_for(lambda: httpx.get(f"{server.http}/api/v1/transcode", headers=server.admin).json()["heal_dead_lettered"] == 1,
                 60, what="the heal job to give up too")  # fmt: skip
        vod = httpx.get(f"{server.http}/api/v1/broadcasts?stream=gap").json()[0]
        assert vod["vod"] and vod["gaps"] == 2 and vod["healed"] == 0  # 480p and 240p of segment 3
    finally:
        server.stop()
