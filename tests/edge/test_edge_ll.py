"""The nginx edge (``tidecast edge-config``) in front of a real origin, for LL-HLS: a crowd
of blocking playlist requests costs the origin one request and is answered once the
playlist is written; hinted parts wait at the origin and are then cached for good; a part
404 is never cached; a hold that ends in 503 reaches the whole crowd through one request.
Real nginx, a real ``OriginNode`` over a local store and the in-process bus."""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from tests.conftest import free_port
from tests.llhls import ll_playlist

from tidecast.bus.memory import MemoryBus
from tidecast.config import Settings
from tidecast.edge.nginx import EdgeConfig, render
from tidecast.messages import PlaylistUpdated
from tidecast.metrics import REGISTRY
from tidecast.origin.blocking import read_playlist
from tidecast.roles import OriginNode, Shared, open_database, open_media
from tidecast.store.base import VersionedStore

pytestmark = pytest.mark.e2e

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PLAYLIST = "hls/s/720p.m3u8"
HOLD = 6.0
RESULTS = ("immediate", "waited", "too_far", "bad", "timeout", "overloaded")


@dataclass
class Edge:
    origin: OriginNode
    bus: MemoryBus
    store: VersionedStore
    url: str

    async def write(self, text: str) -> float:
        await self.store.put(PLAYLIST, text.encode())
        stored = time.monotonic()
        msn, part, ended = read_playlist(text.encode()).position
        await self.bus.publish("playlist.s", PlaylistUpdated("s", "720p", msn, part, ended, time.time()))
        return stored


def origin_blocking_requests() -> float:
    fam = REGISTRY.counter("tidecast_origin_blocking_requests_total", "", ("result",))
    return sum(fam.value(result=r) for r in RESULTS)


def origin_part_waits() -> float:
    fam = REGISTRY.counter("tidecast_origin_part_waits_total", "", ("result",))
    return sum(fam.value(result=r) for r in ("ready", "gone", "timeout", "overloaded"))


def start_nginx(prefix: Path, origin_port: int) -> tuple[subprocess.Popen[bytes], str]:
    """nginx with the generated edge config in front of one origin; (process, its URL)."""
    if not os.path.exists(NGINX):
        pytest.fail("nginx is not installed: scripts/setup.sh --test installs it")
    port = free_port()
    (prefix / "cache").mkdir(parents=True)
    conf = prefix / "nginx.conf"
    conf.write_text(render(EdgeConfig(
        origins=[f"127.0.0.1:{origin_port}"], listen=f"127.0.0.1:{port}", cache_dir=str(prefix / "cache"),
        segment_target=2.0, pid_file=str(prefix / "nginx.pid"), error_log=str(prefix / "error.log"),
        worker_processes="1", user="root",  # the test's files are root's
    )))  # fmt: skip
    check = subprocess.run([NGINX, "-t", "-c", str(conf), "-p", str(prefix)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


def stop_nginx(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(10)


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[Edge]:
    # the edge's connections: from a trusted proxy (no per-address cap)
    settings = Settings(host="127.0.0.1", http_port=0, rtmp_port=0, data_dir=tmp_path / "data",
                        trusted_proxies="127.0.0.1")  # fmt: skip
    bus = MemoryBus()
    store = open_media(settings)
    node = OriginNode(settings, Shared(bus, open_database(settings), store))
    await node.start()
    await node.listen()
    nginx, url = await asyncio.to_thread(start_nginx, tmp_path / "edge", node.http_port)
    try:
        async with httpx.AsyncClient(timeout=2) as c:
            deadline = time.monotonic() + 10
            while True:
                try:
                    if (await c.get(f"{url}/api/v1/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        pytest.fail("the nginx edge did not come up")
                    await asyncio.sleep(0.1)
        yield Edge(node, bus, store, url)
    finally:
        await asyncio.to_thread(stop_nginx, nginx)
        await node.aclose()
        node.db.close()


async def timed_get(client: httpx.AsyncClient, url: str) -> tuple[httpx.Response, float]:
    r = await client.get(url)
    return r, time.monotonic()


async def test_a_crowd_of_blocking_requests_costs_the_origin_one(edge: Edge) -> None:
    await edge.write(ll_playlist(5, 2))
    before = origin_blocking_requests()
    n = 50
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=edge.url, timeout=20, limits=limits) as c:
        started = time.monotonic()
        crowd = [asyncio.create_task(timed_get(c, "/hls/s/720p.m3u8?_HLS_msn=5&_HLS_part=2")) for _ in range(n)]
        await asyncio.sleep(1.0)
        assert not any(t.done() for t in crowd)
        stored = await edge.write(ll_playlist(5, 3))
        got = await asyncio.gather(*crowd)
    assert [r.status_code for r, _ in got] == [200] * n
    assert all('URI="b1/720p/000005.2.m4s"' in r.text for r, _ in got)
    assert all(stored <= t < started + HOLD for _, t in got)
    assert origin_blocking_requests() - before == 1
    assert "age" not in got[0][0].headers  # nginx sends none; the origin neither
    late = sorted(t - stored for _, t in got)
    print(f"\n{n} blocking requests through the edge, answered after the write: "
          f"median {statistics.median(late) * 1000:.0f} ms, max {late[-1] * 1000:.0f} ms")  # fmt: skip


async def test_a_blocking_request_through_the_edge_is_answered_once_written(edge: Edge) -> None:
    await edge.write(ll_playlist(5, 2))
    async with httpx.AsyncClient(base_url=edge.url, timeout=20) as c:
        started = time.monotonic()
        pending = asyncio.create_task(timed_get(c, "/hls/s/720p.m3u8?_HLS_msn=6"))
        await asyncio.sleep(0.5)
        assert not pending.done()
        stored = await edge.write(ll_playlist(7, 0))
        r, answered = await pending
        assert r.status_code == 200 and "b1/720p/000006.m4s" in r.text
        assert stored <= answered < started + HOLD
        assert r.headers["x-cache-status"] == "MISS"
        again = await c.get("/hls/s/720p.m3u8?_HLS_msn=6")  # the same directives: the edge's copy
        assert again.headers["x-cache-status"] == "HIT" and again.text == r.text
        other = await c.get("/hls/s/720p.m3u8?_HLS_msn=6&_HLS_part=0")  # other directives: its own
        assert other.headers["x-cache-status"] == "MISS"
        bad = await c.get("/hls/s/720p.m3u8?_HLS_msn=5&_HLS_part=abc")
        assert bad.status_code == 400 and "decimal integer" in bad.json()["detail"]


async def test_a_hold_that_ends_reaches_the_crowd_through_one_request(edge: Edge) -> None:
    await edge.write(ll_playlist(5, 2, target=1))  # a 3 s hold
    before = origin_blocking_requests()
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=edge.url, timeout=20, limits=limits) as c:
        started = time.monotonic()
        got = await asyncio.gather(*(c.get("/hls/s/720p.m3u8?_HLS_msn=6") for _ in range(20)))
        took = time.monotonic() - started
    assert [r.status_code for r in got] == [503] * 20 and got[0].headers["retry-after"] == "1"
    assert origin_blocking_requests() - before == 1  # not retried, and not asked again per client
    assert 3.0 - 0.05 <= took < HOLD


async def test_parts_wait_at_the_origin_and_stay_at_the_edge(edge: Edge) -> None:
    await edge.write(ll_playlist(5, 2))  # hint: 5.2
    before = origin_part_waits()
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=edge.url, timeout=20, limits=limits) as c:
        crowd = [asyncio.create_task(timed_get(c, "/hls/s/b1/720p/000005.2.m4s")) for _ in range(20)]
        await asyncio.sleep(0.3)
        await edge.store.put("hls/s/b1/720p/000005.2.m4s", b"part 5.2")
        stored = time.monotonic()
        await edge.write(ll_playlist(5, 3))
        got = await asyncio.gather(*crowd)
        assert [r.content for r, _ in got] == [b"part 5.2"] * 20
        assert all(t >= stored for _, t in got)
        assert origin_part_waits() - before == 1  # one request reached the origin
        assert got[0][0].headers["cache-control"] == "public, max-age=31536000, immutable"
        assert (await c.get("/hls/s/b1/720p/000005.2.m4s")).headers["x-cache-status"] == "HIT"
        # a part asked for too early is 404, and the 404 is not kept: once stored, it is served
        early = await c.get("/hls/s/b1/720p/000005.5.m4s")
        assert early.status_code == 404
        await edge.store.put("hls/s/b1/720p/000005.5.m4s", b"part 5.5")
        assert (await c.get("/hls/s/b1/720p/000005.5.m4s")).content == b"part 5.5"
