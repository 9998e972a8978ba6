"""NATS restarts in the middle of a publish (a server of the test's own, with its
JetStream storage on disk): the roles reconnect, the pipeline resumes, and every
segment accepted before, during and after the restart is listed exactly once."""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path

import httpx
import m3u8
import pytest

from tests.conftest import wait_for
from tests.e2e.deployment import Deployment
from tests.services import NatsServer, pg_database
from tidecast import ffmpeg

pytestmark = pytest.mark.e2e

RENDITIONS = ("240p", "144p", "audio")


def test_pipeline_resumes_after_a_nats_restart(tmp_path: Path) -> None:
    nats = NatsServer(tmp_path / "nats-store")
    nats.start()
    with pg_database() as db:
        d = Deployment(tmp_path / "deploy", {
            "bus_url": nats.url, "bus_prefix": "nr" + secrets.token_hex(3), "database_url": db,
            "store_url": (tmp_path / "media").as_uri(), "ladder": "240:300,144:150",
            "x264_preset": "ultrafast", "reconnect_grace": 2.0, "job_ack_wait": 6.0, "workers": 1,
            "playlist_window": 100,
            "transcode_lag_threshold": 120.0,  # an outage is not a reason to degrade here
        })  # fmt: skip
        try:
            d.start("packager", "packager-1")
            for rp in [d.start("worker", "worker-1", wait=False), d.start("origin", "origin-1", wait=False),
                       d.start("ingest", "ingest-1", wait=False)]:  # fmt: skip
                d.wait_started(rp)
            key = d.create_stream("nr")
            p = ffmpeg.TestPattern(width=426, height=240, duration=16, clock=False, video_bitrate_k=400,
                                   preset="ultrafast")  # fmt: skip
            url = f"rtmp://127.0.0.1:{d.procs['ingest-1'].rtmp_port}/live/{key}"
            pub = subprocess.Popen(ffmpeg.publish_test_pattern_args(p, url, ffmpeg.ffmpeg_exe()),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
            base = f"{d.origin('origin-1')}/hls/nr"

            def listed(r: str) -> int:
                resp = httpx.get(f"{base}/{r}.m3u8", timeout=5)
                return len(m3u8.loads(resp.text).segments) if resp.status_code == 200 else 0

            wait_for(lambda: listed("240p") >= 3, 30, what="segments before the restart")
            before = {r: listed(r) for r in RENDITIONS}
            nats.stop()
            time.sleep(3)  # segments cut now wait in the ingest for the bus
            nats.start()
            assert pub.wait(60) == 0, pub.stderr.read().decode(errors="replace")[-2000:] if pub.stderr else ""

            def ended() -> bool:
                return all("#EXT-X-ENDLIST" in httpx.get(f"{base}/{r}.m3u8", timeout=5).text for r in RENDITIONS)

            wait_for(ended, 60, interval=0.5, what=f"every playlist to end\n{d.logs()}")
            counts = set()
            for r in RENDITIONS:
                text = httpx.get(f"{base}/{r}.m3u8").text
                pl = m3u8.loads(text)
                seqs = [int(s.uri.rsplit("/", 1)[1].split(".")[0]) for s in pl.segments]
                assert seqs == list(range(len(seqs))), f"{r}: {seqs}"
                assert "#EXT-X-GAP" not in text, f"{r}: a segment was lost"
                assert len(seqs) > before[r]
                counts.add(len(seqs))
            assert len(counts) == 1 and counts.pop() >= 7, "renditions differ, or segments are missing"
            logs = d.logs()
            assert "retrying" in logs or "reconnect" in logs.lower(), "the restart went unnoticed"
        finally:
            d.close()
            nats.stop()
