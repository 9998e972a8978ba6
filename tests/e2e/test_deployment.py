"""The scale-out deployment on one host, each role its own process: 2 ingest, 3
workers, 2 packagers, 2 origins behind the nginx edge, on PostgreSQL, NATS and an
S3 API server (each packager reaches it through a TCP proxy of the test's). A 60 s
720p publish survives SIGKILLed workers (one every ~5 s), the active packager
SIGKILLed once, NATS restarted once (a NATS server of the test's own, JetStream on
disk), and the active packager SIGSTOPped past its lease with a playlist write on its
way and then SIGCONTed after the stand-by took over: the store refuses the stale
write (fencing) and the old leader logs it. Playlists are watched on both origins
throughout (never backwards, nothing listed missing); late segments are listed as
gaps and heal; nothing accepted before, during or after the faults is lost."""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import m3u8
import pytest
import websockets.sync.client as ws_client

from tests.conftest import wait_for
from tests.e2e.deployment import Deployment, active_packager
from tests.e2e.media_check import decode_segment
from tests.e2e.test_abr import FPS
from tests.e2e.watch import PlaylistWatcher, seq_of, whole_playlist
from tests.faultproxy import FaultProxy
from tests.services import NatsServer, pg_database, s3_server
from tidecast import ffmpeg
from tidecast.media import fmp4

pytestmark = [pytest.mark.e2e, pytest.mark.heavy]

RENDITIONS = ("720p", "360p", "audio")
REFUSED = re.compile(r".*write of hls/chaos/\S+ with epoch \d+ refused: the store has epoch \d+.*")


def fence_a_paused_leader(d: Deployment, db: str, proxies: dict[str, FaultProxy]) -> str:
    """SIGSTOP the leading packager while a playlist write of its is held in its proxy,
    until the stand-by took over; SIGCONT it and let the write through: the store must
    refuse it. Returns the old leader's log line saying so."""
    pid = active_packager(db, "chaos")
    assert pid is not None, "no packager holds the stream's lease"
    leader = next(n for n, rp in d.procs.items() if rp.proc.pid == pid)
    standby = next(n for n in proxies if n != leader)
    took_over = d.procs[standby].text().count("took over broadcast")
    proxies[leader].hold("PUT", ".m3u8")
    assert proxies[leader].wait_held(10), "the leader wrote no playlist"
    os.kill(pid, signal.SIGSTOP)  # paused with a write on its way, past its lease
    try:
        wait_for(lambda: d.procs[standby].text().count("took over broadcast") > took_over, 20,
                 what="the stand-by to take over")  # fmt: skip
    except AssertionError:
        os.kill(d.procs[standby].proc.pid, signal.SIGUSR1)  # what it waits on, in its log
        time.sleep(1.0)
        raise AssertionError(f"the stand-by did not take over\n{d.logs()}\n===== {standby} in full\n"
                             f"{d.procs[standby].text()[-40000:]}") from None  # fmt: skip
    time.sleep(1.0)
    os.kill(pid, signal.SIGCONT)
    time.sleep(0.5)
    proxies[leader].release()  # the stale write reaches the store now
    wait_for(lambda: REFUSED.search(d.procs[leader].text()) is not None, 20,
             what=f"the old leader's write to be refused\n{d.procs[leader].text()[-3000:]}")
    line = REFUSED.search(d.procs[leader].text())
    assert line is not None and d.procs[leader].alive()  # it goes on, as a stand-by
    return line.group(0).strip()


class EdgeViewer(threading.Thread):
    """Headless Chromium plays the live stream through the edge (hls.js on the watch
    page) for a while during the chaos; records how far playback got."""

    def __init__(self, url: str, seconds: float) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.seconds = seconds
        self.played = 0.0
        self.stats: dict[str, object] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        from tests.e2e.browser import chromium_page

        try:
            with chromium_page() as page:
                # a small player: hls.js caps the level to its size (360p), so decoding in
                # software does not starve the 2-core machine that runs the whole deployment
                page.set_viewport_size({"width": 640, "height": 400})  # type: ignore[attr-defined]
                page.goto(self.url)  # type: ignore[attr-defined]
                page.wait_for_function("window.tidecastPlayer && window.tidecastPlayer.state === 'playing'",  # type: ignore[attr-defined]
                                       timeout=40_000)  # fmt: skip
                t0 = page.evaluate("document.getElementById('video').currentTime")  # type: ignore[attr-defined]
                time.sleep(self.seconds)
                t1 = page.evaluate("document.getElementById('video').currentTime")  # type: ignore[attr-defined]
                self.played = t1 - t0
                self.stats = page.evaluate("window.tidecastPlayer.stats()")  # type: ignore[attr-defined]
        except BaseException as exc:  # noqa: BLE001 - reported by the test's assertion
            self.error = exc


def check_through_edge(base: str, pl: m3u8.M3U8, *, video: bool) -> None:
    """Every segment comes through the edge and the timeline runs on without a gap or
    overlap (each fragment's decode time = the previous one's + its duration, within
    one frame); the first, middle and last segments also decode cleanly."""
    client = httpx.Client(timeout=10)
    init = client.get(f"{base}/{pl.segments[0].init_section.uri}").content
    timescale = next(iter(fmp4.read_track_timescales(init).values()))
    frame = timescale // FPS if video else 1024
    expected = None
    for i, seg in enumerate(pl.segments):
        data = client.get(f"{base}/{seg.uri}").content
        start = next(iter(fmp4.read_base_decode_times(data).values()))
        if expected is not None:
            assert abs(start - expected) <= frame, f"{seg.uri}: timeline off by {start - expected} ticks"
        expected = start + next(iter(fmp4.segment_durations(data, fmp4.read_trex_default_durations(init)).values()))
        if i in (0, len(pl.segments) // 2, len(pl.segments) - 1):
            rep = decode_segment(seg.uri, init, data)
            assert not rep.errors and (rep.first_video_keyframe if video else rep.audio), seg.uri
    client.close()


def test_deployment_survives_chaos(tmp_path: Path) -> None:
    nats = NatsServer(tmp_path / "nats-store")  # the test's own: it is restarted mid-publish
    nats.start()
    prefix = "dep" + secrets.token_hex(3)
    with s3_server() as s3, pg_database() as db, FaultProxy(s3) as p1, FaultProxy(s3) as p2:
        store = "s3://tidecast/live?endpoint={}"
        proxies = {"packager-1": p1, "packager-2": p2}
        penv = {name: {"TIDECAST_STORE_URL": store.format(p.url)} for name, p in proxies.items()}
        d = Deployment(tmp_path / "deploy", {
            "bus_url": nats.url, "bus_prefix": prefix, "database_url": db,
            "store_url": store.format(s3), "ladder": "720:2500,360:700",
            "passthrough": False,  # both rungs are encoded: the workers killed are doing them
            "x264_preset": "ultrafast", "reconnect_grace": 3.0, "lease_ttl": 3.0, "job_ack_wait": 6.0,
            "transcode_attempts": 10, "workers": 1, "playlist_window": 200,
            "transcode_lag_threshold": 120.0,  # every rung of every segment, however late
        })  # fmt: skip
        rng = random.Random(6)
        try:
            d.start("packager", "packager-1", env=penv["packager-1"])  # the first one creates the schema
            started = [d.start(role, f"{role}-{i}", wait=False, env=penv.get(f"{role}-{i}")) for role, n in
                       (("packager", 2), ("worker", 3), ("origin", 2), ("ingest", 2)) for i in range(1, n + 1)
                       if f"{role}-{i}" != "packager-1"]  # fmt: skip
            for rp in started:
                d.wait_started(rp)
            d.start_edge(["origin-1", "origin-2"])
            key = d.create_stream("chaos")
            url = f"rtmp://127.0.0.1:{d.procs['ingest-1'].rtmp_port}/live/{key}"
            pattern = ffmpeg.TestPattern(width=1280, height=720, fps=FPS, duration=60, video_bitrate_k=2500,
                                         clock=False, preset="ultrafast")  # fmt: skip
            pub = subprocess.Popen(ffmpeg.publish_test_pattern_args(pattern, url, ffmpeg.ffmpeg_exe()),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
            watcher = PlaylistWatcher([d.origin("origin-1"), d.origin("origin-2")], "chaos", RENDITIONS)
            watcher.start()

            # chat: a message sent through one origin reaches a client of the other
            wait_for(lambda: httpx.get(f"{d.origin('origin-2')}/api/v1/streams/chaos").json()["live"], 20,
                     what="the stream to be live on origin-2")  # fmt: skip
            with ws_client.connect(f"ws://127.0.0.1:{d.procs['origin-2'].http_port}/chat/chaos") as far, \
                    ws_client.connect(f"ws://127.0.0.1:{d.procs['origin-1'].http_port}/chat/chaos") as near:  # fmt: skip
                far.send(json.dumps({"type": "join", "name": "far"}))
                near.send(json.dumps({"type": "join", "name": "near"}))
                time.sleep(0.3)
                near.send(json.dumps({"type": "message", "text": "across origins"}))
                deadline = time.monotonic() + 5
                got = None
                while time.monotonic() < deadline and got is None:
                    ev = json.loads(far.recv(timeout=5))
                    if ev.get("type") == "message":
                        got = ev
                assert got is not None and got["text"] == "across origins" and got["user"] == "near"

            viewer = EdgeViewer(f"{d.edge}/watch/chaos", 15)
            viewer.start()

            # chaos: a random worker SIGKILLed every ~5 s (and started again), the
            # packager leading the stream SIGKILLed once, NATS stopped for 3 s once, the
            # leading packager paused past its lease once
            kills: list[str] = []
            packager_killed = nats_restarted = False
            refused = ""
            t0 = time.monotonic()
            while pub.poll() is None and time.monotonic() - t0 < 90:
                time.sleep(5)
                victim = rng.choice(["worker-1", "worker-2", "worker-3"])
                d.kill(victim)
                kills.append(victim)
                d.start("worker", victim, wait=False)
                if not packager_killed and time.monotonic() - t0 > 20:
                    pid = active_packager(db, "chaos")
                    assert pid is not None, "no packager holds the stream's lease"
                    leader = next(n for n, p in d.procs.items() if p.proc.pid == pid)
                    d.kill(leader)
                    kills.append(leader)
                    packager_killed = True
                    d.start("packager", leader, wait=False, env=penv[leader])
                elif packager_killed and not nats_restarted and time.monotonic() - t0 > 30:
                    nats.stop()  # segments cut meanwhile wait in the ingest for the bus
                    time.sleep(3)
                    nats.start()
                    nats_restarted = True
                elif nats_restarted and not refused and time.monotonic() - t0 > 38:
                    refused = fence_a_paused_leader(d, db, proxies)
            assert pub.wait(30) == 0, pub.stderr.read().decode(errors="replace")[-2000:] if pub.stderr else ""
            assert packager_killed and nats_restarted and refused and len(kills) >= 8, kills
            viewer.join(60)
            assert viewer.error is None, repr(viewer.error)
            assert viewer.played > 9, f"played {viewer.played:.1f} s in 15 s through the edge: {viewer.stats}"
            print(f"chaos: {len(kills)} SIGKILLs ({', '.join(kills)}); the edge viewer played "
                  f"{viewer.played:.1f} s in 15 s; player stats {viewer.stats}; fencing: {refused}")  # -s

            # every rendition ends with every segment, in order, continuous
            base = f"{d.origin('origin-1')}/hls/chaos"

            def ended() -> bool:
                return all("#EXT-X-ENDLIST" in httpx.get(f"{base}/{r}.m3u8").text for r in RENDITIONS)

            wait_for(ended, 120, interval=0.5, what=f"every playlist to end\n{d.logs()}")

            def whole() -> bool:  # a job late past the segment deadline was a gap; it heals
                return not any("#EXT-X-GAP" in httpx.get(f"{base}/{r}.m3u8").text for r in RENDITIONS)

            wait_for(whole, 90, interval=0.5, what=f"late segments to heal\n{d.logs()}")
            watcher.finish()
            assert watcher.polls > 50
            assert not watcher.problems, watcher.problems[:10]
            counts = set()
            for r in RENDITIONS:
                pl = whole_playlist(httpx.get(f"{base}/{r}.m3u8").text)
                seqs = [seq_of(s.uri) for s in pl.segments]
                assert seqs == list(range(len(seqs))), f"{r}: {seqs}"
                assert "#EXT-X-GAP" not in httpx.get(f"{base}/{r}.m3u8").text, f"{r} has gaps"
                counts.add(len(seqs))
                check_through_edge(f"{d.edge}/hls/chaos", pl, video=r != "audio")
            assert len(counts) == 1 and counts.pop() >= 29, "renditions differ or too few segments"
            text_log = d.logs()
            assert "took over broadcast" in text_log and "reconnected" in text_log

            # the edge caches segments (HIT) and keeps serving with one origin stopped
            pl = whole_playlist(httpx.get(f"{d.edge}/hls/chaos/720p.m3u8").text)
            seg_url = f"{d.edge}/hls/chaos/{pl.segments[3].uri}"
            httpx.get(seg_url)
            assert httpx.get(seg_url).headers.get("x-cache-status") == "HIT"
            d.stop("origin-1")
            for s in pl.segments[-3:]:  # not yet fetched through the edge... except by fetch_segments
                r2 = httpx.get(f"{d.edge}/hls/chaos/{s.uri}?after-stop=1")
                assert r2.status_code == 200 and r2.content
            master = httpx.get(f"{d.edge}/hls/chaos/master.m3u8?after-stop=1")
            assert master.status_code == 200 and "720p.m3u8" in master.text
        finally:
            d.close()
            nats.stop()
