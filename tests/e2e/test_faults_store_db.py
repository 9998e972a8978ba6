"""Store and database faults under a live stream, on the real engines: ``tidecast serve``
on NATS JetStream (the machine's server, a namespace of the test's own), PostgreSQL (an
instance of the test's own, so stopping it disturbs nothing else) and an S3 API server
(its own process, reached through a TCP proxy of the test's).

One publish goes through four faults, one after the other:
1. the S3 server stopped (SIGSTOP) for 5 s;
2. every connection to it cut and refused for 5 s;
3. every third PUT held 3 s before it reaches the server, for 10 s;
4. PostgreSQL stopped for 10 s.
Throughout, a poller checks that no playlist goes backwards and that everything listed
is there; afterwards every rendition has ended with every segment, and the recording is
VOD with every segment of every rendition (none lost, none a gap)."""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.bus.test_bus_contract import NATS_URL, ensure_nats
from tests.conftest import start_server, wait_for
from tests.e2e.watch import PlaylistWatcher, seq_of, whole_playlist
from tests.faultproxy import FaultProxy
from tests.services import drop_nats_namespace, private_postgres, s3_process
from tidecast import ffmpeg

pytestmark = pytest.mark.e2e

RENDITIONS = ("240p", "144p", "audio")


def test_store_and_database_outages_lose_nothing(tmp_path: Path, ffmpeg_exe: str) -> None:
    ensure_nats()
    prefix = "flt" + secrets.token_hex(3)
    with s3_process() as s3, FaultProxy(s3.url) as proxy, private_postgres(tmp_path / "pg") as pg:
        env = {
            "TIDECAST_BUS_URL": NATS_URL, "TIDECAST_BUS_PREFIX": prefix,
            "TIDECAST_DATABASE_URL": pg.create_database(),
            "TIDECAST_STORE_URL": f"s3://tidecast/media?endpoint={proxy.url}",
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "TIDECAST_LADDER": "240:300,144:150", "TIDECAST_PASSTHROUGH": "0", "TIDECAST_WORKERS": "1", "TIDECAST_X264_PRESET": "ultrafast",
            "TIDECAST_TRANSCODE_LAG_THRESHOLD": "120",  # slow transcodes wait; this test is not about skips
        }  # fmt: skip
        server = start_server(tmp_path / "data", "--reconnect-grace", "2", "--playlist-window", "200", env=env)
        try:
            key = server.create_stream("f")
            p = ffmpeg.TestPattern(width=426, height=240, duration=44, clock=False, video_bitrate_k=400,
                                   preset="ultrafast")  # fmt: skip
            pub = subprocess.Popen(ffmpeg.publish_test_pattern_args(p, server.rtmp_url(key), ffmpeg_exe),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
            wait_for(lambda: httpx.get(f"{server.http}/api/v1/streams/f").json()["live"], 20, what="live")
            watcher = PlaylistWatcher([server.http], "f", RENDITIONS)
            watcher.start()
            t0 = time.monotonic()

            def at(t: float) -> None:
                time.sleep(max(0.0, t - (time.monotonic() - t0)))

            at(4)
            s3.pause()  # 1. the S3 server stops answering
            at(9)
            s3.resume()
            at(12)
            proxy.refuse()  # 2. the store is unreachable
            at(17)
            proxy.pass_through()
            at(20)
            proxy.delay("PUT", every=3, seconds=3.0)  # 3. every third PUT takes 3 s
            at(30)
            proxy.pass_through()
            at(31)
            pg.stop()  # 4. the database is away
            at(41)
            pg.start()
            delayed = proxy.stats().delayed
            assert pub.wait(40) == 0, pub.stderr.read().decode(errors="replace")[-2000:] if pub.stderr else ""

            base = f"{server.http}/hls/f"

            def ended() -> bool:
                try:
                    return all("#EXT-X-ENDLIST" in httpx.get(f"{base}/{r}.m3u8", timeout=5).text for r in RENDITIONS)
                except httpx.TransportError:
                    return False

            wait_for(ended, 120, interval=0.5, what=f"every playlist to end\n{server.log()[-6000:]}")
            watcher.finish()
            assert watcher.polls > 50 and not watcher.problems, watcher.problems[:10]
            assert delayed >= 5, f"only {delayed} PUTs were delayed"

            counts = set()
            for r in RENDITIONS:
                pl = whole_playlist(httpx.get(f"{base}/{r}.m3u8").text)
                seqs = [seq_of(s.uri) for s in pl.segments]
                assert seqs == list(range(len(seqs))), f"{r}: {seqs}"
                counts.add(len(seqs))
            assert len(counts) == 1 and counts.pop() >= 19, "renditions differ or too few segments"

            def vod() -> dict[str, object] | None:
                try:
                    rows = httpx.get(f"{server.http}/api/v1/broadcasts?stream=f", timeout=5).json()
                except (httpx.TransportError, ValueError):
                    return None
                return rows[0] if rows and rows[0]["vod"] else None

            wait_for(lambda: vod() is not None, 60, what=f"the VOD\n{server.log()[-4000:]}")
            info = vod()
            assert info is not None
            # the faults really hit: the stages retried through them
            metrics = httpx.get(f"{server.http}/metrics", headers=server.admin).text

            def total(name: str) -> float:
                return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                           if line.startswith(name + "{") or line.startswith(name + " "))  # fmt: skip

            store_retries = total("tidecast_store_retries_total")
            recording_retries = total("tidecast_packager_recording_retries_total")
            assert store_retries > 0 and recording_retries > 0, metrics
            print(f"faults: {delayed} PUTs delayed, {watcher.failed_fetches} viewer fetches failed, "
                  f"{store_retries:.0f} store retries, {total('tidecast_db_retries_total'):.0f} database "
                  f"retries, {recording_retries:.0f} recording retries, "
                  f"{total('tidecast_packager_playlist_write_retries_total'):.0f} playlist write retries")
            for r in RENDITIONS:  # the recording lost nothing: every segment, real
                text = httpx.get(f"{server.http}/hls/f/{info['id']}/{r}.m3u8").text
                pl = whole_playlist(text)
                assert pl.is_endlist and "#EXT-X-GAP" not in text, f"{r}:\n{text}"
                assert [seq_of(s.uri) for s in pl.segments] == list(range(len(pl.segments))), r
        finally:
            server.stop()
            drop_nats_namespace(NATS_URL, prefix)
