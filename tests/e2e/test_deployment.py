"""The scale-out deployment on one host, each role its own process: 2 ingest, 3
workers, 2 packagers, 2 origins behind the nginx edge, on PostgreSQL, NATS and an
S3 API server. A 60 s 720p publish survives SIGKILLed workers (one every ~5 s),
the active packager SIGKILLed once and NATS restarted once (a NATS server of the
test's own, JetStream on disk); playlists are watched throughout, and nothing
accepted before, during or after the faults is lost."""

from __future__ import annotations

import json
import random
import secrets
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
from tests.services import NatsServer, pg_database, s3_server
from tidecast import ffmpeg
from tidecast.media import fmp4

pytestmark = pytest.mark.e2e

RENDITIONS = ("720p", "360p", "audio")


def seq_of(uri: str) -> int:
    return int(uri.rsplit("/", 1)[1].split(".")[0])


class PlaylistWatcher(threading.Thread):
    """Polls every rendition playlist (alternating origins) until stopped: a playlist
    must never go backwards, and everything it lists must be there."""

    def __init__(self, origins: list[str], stream: str) -> None:
        super().__init__(daemon=True)
        self.origins = origins
        self.stream = stream
        self.stop = threading.Event()
        self.problems: list[str] = []
        self.polls = 0
        self.last: dict[str, tuple[int, int]] = {}  # rendition -> (first msn, next msn)
        self.checked: set[str] = set()

    def run(self) -> None:
        client = httpx.Client(timeout=5)
        i = 0
        while not self.stop.is_set() and self.polls < 5000:
            i += 1
            base = f"{self.origins[i % len(self.origins)]}/hls/{self.stream}"
            for r in RENDITIONS:
                try:
                    resp = client.get(f"{base}/{r}.m3u8")
                except httpx.TransportError:
                    continue  # an origin being stopped on purpose
                if resp.status_code != 200:
                    continue
                pl = m3u8.loads(resp.text)
                first, nxt = pl.media_sequence or 0, (pl.media_sequence or 0) + len(pl.segments)
                old = self.last.get(r)
                if old is not None and (first < old[0] or nxt < old[1]):
                    self.problems.append(f"{r} went backwards: {old} -> {(first, nxt)}")
                self.last[r] = (max(first, old[0]) if old else first, max(nxt, old[1]) if old else nxt)
                for seg in pl.segments:
                    for uri in (seg.uri, seg.init_section.uri if seg.init_section else None):
                        if uri and uri not in self.checked:
                            if client.head(f"{base}/{uri}").status_code != 200:
                                self.problems.append(f"{r} listed a missing object {uri}")
                            self.checked.add(uri)
            self.polls += 1
            time.sleep(0.3)
        client.close()


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
    with s3_server() as s3, pg_database() as db:
        d = Deployment(tmp_path / "deploy", {
            "bus_url": nats.url, "bus_prefix": prefix, "database_url": db,
            "store_url": f"s3://tidecast/live?endpoint={s3}", "ladder": "720:2500,360:700",
            "x264_preset": "ultrafast", "reconnect_grace": 3.0, "lease_ttl": 3.0, "job_ack_wait": 6.0,
            "transcode_attempts": 10, "workers": 1, "playlist_window": 200,
            "transcode_lag_threshold": 120.0,  # every rung of every segment, however late
        })  # fmt: skip
        rng = random.Random(6)
        try:
            d.start("packager", "packager-1")  # the first one creates the schema
            started = [d.start(role, f"{role}-{i}", wait=False) for role, n in
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
            watcher = PlaylistWatcher([d.origin("origin-1"), d.origin("origin-2")], "chaos")
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
            # packager leading the stream SIGKILLed once, NATS stopped for 3 s once
            kills: list[str] = []
            packager_killed = nats_restarted = False
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
                    d.start("packager", leader, wait=False)
                elif packager_killed and not nats_restarted and time.monotonic() - t0 > 35:
                    nats.stop()  # segments cut meanwhile wait in the ingest for the bus
                    time.sleep(3)
                    nats.start()
                    nats_restarted = True
            assert pub.wait(30) == 0, pub.stderr.read().decode(errors="replace")[-2000:] if pub.stderr else ""
            assert packager_killed and nats_restarted and len(kills) >= 10, kills
            viewer.join(60)
            assert viewer.error is None, repr(viewer.error)
            assert viewer.played > 9, f"played {viewer.played:.1f} s in 15 s through the edge: {viewer.stats}"
            print(f"chaos: {len(kills)} SIGKILLs ({', '.join(kills)}); the edge viewer played "
                  f"{viewer.played:.1f} s in 15 s; player stats {viewer.stats}")  # shown with -s

            # every rendition ends with every segment, in order, continuous
            base = f"{d.origin('origin-1')}/hls/chaos"

            def ended() -> bool:
                return all("#EXT-X-ENDLIST" in httpx.get(f"{base}/{r}.m3u8").text for r in RENDITIONS)

            wait_for(ended, 120, interval=0.5, what=f"every playlist to end\n{d.logs()}")
            watcher.stop.set()
            watcher.join(10)
            assert watcher.polls > 50
            assert not watcher.problems, watcher.problems[:10]
            counts = set()
            for r in RENDITIONS:
                pl = m3u8.loads(httpx.get(f"{base}/{r}.m3u8").text)
                seqs = [seq_of(s.uri) for s in pl.segments]
                assert seqs == list(range(len(seqs))), f"{r}: {seqs}"
                assert "#EXT-X-GAP" not in httpx.get(f"{base}/{r}.m3u8").text, f"{r} has gaps"
                counts.add(len(seqs))
                check_through_edge(f"{d.edge}/hls/chaos", pl, video=r != "audio")
            assert len(counts) == 1 and counts.pop() >= 29, "renditions differ or too few segments"
            text_log = d.logs()
            assert "took over broadcast" in text_log and "reconnected" in text_log

            # the edge caches segments (HIT) and keeps serving with one origin stopped
            pl = m3u8.loads(httpx.get(f"{d.edge}/hls/chaos/720p.m3u8").text)
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
