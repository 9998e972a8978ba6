"""Fencing a stale packager. A deployment (ingest, two packagers, two origins) on NATS
JetStream, PostgreSQL and an S3 API server of its own; each packager reaches the store
through a TCP proxy of the test's. While the leading packager has a playlist write on
its way (held in its proxy), it is SIGSTOPped past its lease; the stand-by takes the
stream over; then the old leader is SIGCONTed and its held write goes through: the
store refuses it (its epoch is older than the stored playlist's), and the old leader
logs the refusal and drops the stream. A poller of every playlist on both origins sees
no regression and nothing listed that is missing, and the stream ends whole."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path

import httpx
import m3u8
import pytest

from tests.bus.test_bus_contract import NATS_URL, ensure_nats
from tests.conftest import wait_for
from tests.e2e.deployment import Deployment, active_packager
from tests.e2e.watch import PlaylistWatcher, seq_of
from tests.faultproxy import FaultProxy
from tests.services import pg_database, s3_server
from tidecast import ffmpeg
from tidecast.bus.nats import NatsBus

pytestmark = pytest.mark.e2e

REFUSED = re.compile(r".*write of hls/fence/\S+ with epoch \d+ refused: the store has epoch \d+.*")


def test_a_paused_leaders_late_writes_are_refused(tmp_path: Path) -> None:
    ensure_nats()
    prefix = "fen" + secrets.token_hex(3)
    with s3_server() as s3, pg_database() as db, FaultProxy(s3) as p1, FaultProxy(s3) as p2:
        store = "s3://tidecast/live?endpoint={}"
        d = Deployment(tmp_path / "deploy", {
            "bus_url": NATS_URL, "bus_prefix": prefix, "database_url": db,
            "store_url": store.format(s3), "ladder": "none", "reconnect_grace": 2.0, "lease_ttl": 2.0,
            "playlist_window": 200,
        })  # fmt: skip
        proxies = {"packager-1": p1, "packager-2": p2}
        try:
            for name, proxy in proxies.items():
                d.start("packager", name, env={"TIDECAST_STORE_URL": store.format(proxy.url)})
            for name, role in (("origin-1", "origin"), ("origin-2", "origin"), ("ingest-1", "ingest")):
                d.start(role, name)
            key = d.create_stream("fence")
            url = f"rtmp://127.0.0.1:{d.procs['ingest-1'].rtmp_port}/live/{key}"
            pattern = ffmpeg.TestPattern(width=426, height=240, duration=30, clock=False, video_bitrate_k=300,
                                         preset="ultrafast")  # fmt: skip
            pub = subprocess.Popen(ffmpeg.publish_test_pattern_args(pattern, url, ffmpeg.ffmpeg_exe()),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
            watcher = PlaylistWatcher([d.origin("origin-1"), d.origin("origin-2")], "fence", ("source",))
            watcher.start()
            base = f"{d.origin('origin-1')}/hls/fence"

            def listed() -> int:
                r = httpx.get(f"{base}/source.m3u8")
                return len(m3u8.loads(r.text).segments) if r.status_code == 200 else 0

            wait_for(lambda: listed() >= 3, 30, what="the stream to be listed")
            pid = active_packager(db, "fence")
            assert pid is not None, "no packager leads the stream"
            leader = next(n for n, rp in d.procs.items() if rp.proc.pid == pid)
            standby = next(n for n in proxies if n != leader)

            proxies[leader].hold("PUT", ".m3u8")  # the leader's next playlist write stays on its way
            assert proxies[leader].wait_held(10), "the leader wrote no playlist"
            os.kill(pid, signal.SIGSTOP)  # paused with a write in flight, past its lease
            wait_for(lambda: "took over broadcast" in d.procs[standby].text(), 20,
                     what=f"the stand-by to take over\n{d.logs()}")  # fmt: skip
            n_after_takeover = listed()
            time.sleep(1.0)
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.5)
            proxies[leader].release()  # the stale write reaches the store now
            wait_for(lambda: REFUSED.search(d.procs[leader].text()) is not None, 20,
                     what=f"the old leader's write to be refused\n{d.procs[leader].text()[-3000:]}")
            line = REFUSED.search(d.procs[leader].text())
            assert line is not None
            print(f"fencing: {line.group(0).strip()}")  # shown with -s

            assert pub.wait(40) == 0, pub.stderr.read().decode(errors="replace")[-2000:] if pub.stderr else ""
            for origin in ("origin-1", "origin-2"):
                wait_for(lambda o=origin: "#EXT-X-ENDLIST" in httpx.get(f"{d.origin(o)}/hls/fence/source.m3u8").text,
                         60, what=f"the playlist to end on {origin}")  # fmt: skip
            watcher.finish()
            assert watcher.polls > 30 and not watcher.problems, watcher.problems[:10]
            pl = m3u8.loads(httpx.get(f"{base}/source.m3u8").text)
            seqs = [seq_of(s.uri) for s in pl.segments]
            assert seqs == list(range(len(seqs))) and len(seqs) > n_after_takeover >= 3, seqs
            assert "#EXT-X-GAP" not in httpx.get(f"{base}/source.m3u8").text
            assert active_packager(db, "fence") in (None, d.procs[standby].proc.pid)
            assert "packager-1" in d.procs and d.procs[leader].alive()  # it went on, as a stand-by
        finally:
            d.close()

            async def cleanup() -> None:
                bus = NatsBus(NATS_URL, prefix=prefix)
                await bus.start()
                await bus.delete_stream()
                await bus.aclose()

            asyncio.run(cleanup())
