"""Transcode backpressure end to end: one slow job makes transcoding lag, new segments
skip the top rung (EXT-X-GAP there while live, same sequence numbers everywhere, the
lowest rung complete), the lag is reported at /metrics, and the ladder comes back
afterwards. Then the recording heals: what live skipped is encoded at low priority and
the playlists list every segment, the broadcast records which ones healed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import m3u8
import pytest

from tests.conftest import start_server, wait_for
from tests.e2e.watch import PlaylistWatcher, whole_playlist
from tidecast import ffmpeg

pytestmark = [pytest.mark.e2e, pytest.mark.heavy]


def sequences(pl: m3u8.M3U8) -> list[int]:
    return [int(s.uri.rsplit("/", 1)[1].split(".")[0]) for s in pl.segments]


def gaps(pl: m3u8.M3U8) -> list[int]:
    return [
        n for n, s in zip(sequences(pl), pl.segments, strict=True) if "#EXT-X-GAP" in s.dumps(None)
    ]


def test_lagging_transcode_skips_the_top_rung(tmp_path: Path, ffmpeg_exe: str) -> None:
    env = {
        "TIDECAST_LADDER": "360:600,240:300,144:150",  # a 240p source gets 240p + 144p
        "TIDECAST_PASSTHROUGH": "0",  # both encoded: the top one is what backpressure skips
        "TIDECAST_WORKERS": "1",
        "TIDECAST_TRANSCODE_LAG_THRESHOLD": "1.5",
        "TIDECAST_FAULT_DELAY": "1:4",  # the only worker sits on segment 1 for 4 s
    }
    server = start_server(
        tmp_path / "data", "--reconnect-grace", "0", "--playlist-window", "40", env=env
    )
    try:
        key = server.create_stream("bp")
        p = ffmpeg.TestPattern(width=426, height=240, duration=12, clock=False, video_bitrate_k=400)
        pub = subprocess.Popen(ffmpeg.publish_test_pattern_args(p, server.rtmp_url(key), ffmpeg_exe),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        watcher = PlaylistWatcher([server.http], "bp", ("240p", "144p", "audio"), interval=0.1)
        watcher.start()
        assert pub.wait(timeout=30) == 0
        base = f"{server.http}/hls/bp"

        def ended() -> bool:
            return all(
                "#EXT-X-ENDLIST" in httpx.get(f"{base}/{r}.m3u8").text
                for r in ("240p", "144p", "audio")
            )

        wait_for(ended, 20, interval=0.3, what="every playlist to end")
        watcher.finish()
        assert not watcher.problems, watcher.problems
        pls = {r: whole_playlist(httpx.get(f"{base}/{r}.m3u8").text) for r in ("240p", "144p", "audio")}
        seqs = sequences(pls["144p"])
        assert len(seqs) >= 5 and seqs == list(range(len(seqs))), seqs
        for name, pl in pls.items():  # one timeline: segment N is N in every rendition
            assert sequences(pl) == seqs and pl.media_sequence == pls["144p"].media_sequence, name
        top_gaps = sorted(watcher.gaps_seen.get("240p", ()))  # msn = sequence: the first broadcast
        assert top_gaps, "the top rung never skipped a segment"
        assert top_gaps[0] >= 1  # the first job never lags behind an earlier one
        assert top_gaps[-1] < seqs[-1], "the ladder did not come back after the lag"
        assert "144p" not in watcher.gaps_seen and "audio" not in watcher.gaps_seen

        # the recording heals: live skipped 240p, a heal job encodes it afterwards
        def healed() -> bool:
            return gaps(whole_playlist(httpx.get(f"{base}/240p.m3u8").text)) == []

        wait_for(healed, 60, interval=0.5, what=f"the skipped segments to heal\n{server.log()[-3000:]}")
        bid = httpx.get(f"{server.http}/api/v1/broadcasts?stream=bp").json()[0]["id"]

        def vod_whole() -> bool:
            b = httpx.get(f"{server.http}/api/v1/broadcasts/{bid}").json()
            return bool(b["vod"]) and b["gaps"] == 0

        wait_for(vod_whole, 30, interval=0.5, what="the VOD to list every segment")
        b = httpx.get(f"{server.http}/api/v1/broadcasts/{bid}").json()
        assert sorted(s["sequence"] for s in b["healed_segments"] if s["rendition"] == "240p") == top_gaps
        vod = httpx.get(f"{server.http}/hls/bp/{bid}/240p.m3u8").text
        assert "#EXT-X-GAP" not in vod and len(whole_playlist(vod).segments) == len(seqs)
        master = whole_playlist(httpx.get(f"{base}/master.m3u8").text)
        assert sorted(v.uri for v in master.playlists) == ["144p.m3u8", "240p.m3u8"]

        r = httpx.get(f"{server.http}/metrics", headers=server.admin)
        assert r.status_code == 200 and r.headers["content-type"].startswith(
            "text/plain; version=0.0.4"
        )
        degraded = re.search(
            r'^tidecast_degraded_segments_total\{stream="bp"\} (\S+)$', r.text, re.M
        )
        assert degraded and float(degraded.group(1)) == len(top_gaps), r.text
        assert re.search(r'^tidecast_transcode_lag_seconds\{stream="bp"\} \S+$', r.text, re.M), (
            r.text
        )
        assert re.search(r'^tidecast_transcode_skipped_rungs\{stream="bp"\} 0$', r.text, re.M), (
            r.text
        )
        log = server.log()
        assert "new segments skip 240p" in log and "WARNING" in log
        assert httpx.get(f"{server.http}/api/v1/transcode", headers=server.admin).json()["dead_lettered"] == 0
    finally:
        server.stop()
