"""Hostile clients over real sockets against one real ``tidecast serve`` while a stream is
live and a viewer (an HLS client fetching every new segment) watches it: slowloris HTTP
connections, connections over the per-address cap, chat sockets that never join, a crowd
of MP4 downloads from one address, spoofed X-Forwarded-For, operator endpoints without a
token. Other clients are other loopback addresses (client sockets bound to 127.0.0.x).

Each test prints its figures (``-s`` shows them): connections held, how long the attack's
connections lived, the time a legitimate request took during the attack."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import websockets

from tests.conftest import TidecastServer, free_port, start_server, wait_for
from tests.e2e.conftest import Clips
from tidecast import ffmpeg

pytestmark = pytest.mark.e2e

HEAD_TIMEOUT = 3.0
JOIN_TIMEOUT = 3.0
HTTP_PER_IP = 60
CHAT_PER_IP = 50
TRUSTED = "127.0.0.9"
OPERATOR_PORT = free_port()


@dataclass
class Viewer:
    """Plays the live stream the way a player does: the media playlist every 0.5 s, every
    new segment once. ``stalls`` are waits past 3 segment durations for a new segment."""

    server: TidecastServer
    errors: list[str] = field(default_factory=list)
    segments: int = 0
    longest_wait: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        url = f"{self.server.http}/hls/live/source.m3u8"
        seen: set[str] = set()
        last_new = time.monotonic()
        with httpx.Client(timeout=5) as c:
            while not self.stop.is_set():
                try:
                    r = c.get(url)
                    if r.status_code == 200:
                        for uri in [ln for ln in r.text.splitlines() if ln and not ln.startswith("#")][-3:]:
                            if uri not in seen:
                                seg = c.get(f"{self.server.http}/hls/live/{uri}")
                                if seg.status_code != 200:
                                    self.errors.append(f"{uri}: {seg.status_code}")
                                seen.add(uri)
                                self.segments += 1
                                now = time.monotonic()
                                self.longest_wait = max(self.longest_wait, now - last_new)
                                last_new = now
                    elif seen:
                        self.errors.append(f"playlist: {r.status_code}")
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                self.stop.wait(0.5)

    def check(self, since: int) -> None:
        assert not self.errors, self.errors
        assert self.segments > since, "the viewer got no new segment during the attack"
        assert self.longest_wait < 6 * 2.0, f"the viewer waited {self.longest_wait:.1f} s for a segment"


@dataclass
class Hostile:
    server: TidecastServer
    viewer: Viewer


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, clips: Clips) -> Iterator[Hostile]:
    env = {
        "TIDECAST_HTTP_HEAD_TIMEOUT": str(HEAD_TIMEOUT), "TIDECAST_HTTP_MAX_PER_IP": str(HTTP_PER_IP),
        "TIDECAST_CHAT_JOIN_TIMEOUT": str(JOIN_TIMEOUT), "TIDECAST_CHAT_MAX_PER_IP": str(CHAT_PER_IP),
        "TIDECAST_TRUSTED_PROXIES": TRUSTED, "TIDECAST_OPERATOR_LISTEN": f"127.0.0.1:{OPERATOR_PORT}",
        "TIDECAST_DOWNLOAD_MAX_PER_IP": "2", "TIDECAST_DOWNLOAD_MAX_TOTAL": "4", "TIDECAST_DOWNLOAD_MAX_BUILDS": "1",
    }  # fmt: skip
    server = start_server(tmp_path_factory.mktemp("hostile") / "data", "--reconnect-grace", "1", env=env)
    clip = clips(320, 240, 30, 10, 300)
    live = subprocess.Popen(ffmpeg.publish_file_args(str(clip), server.rtmp_url(server.create_stream("live")),
                                                     ffmpeg.ffmpeg_exe(), loops=60),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    viewer = Viewer(server)
    thread = threading.Thread(target=viewer.run, daemon=True)
    try:
        wait_for(lambda: httpx.get(f"{server.http}/hls/live/source.m3u8").status_code == 200, 30,
                 what="the live playlist")  # fmt: skip
        thread.start()
        wait_for(lambda: viewer.segments >= 2, 20, what="the viewer's first segments")
        yield Hostile(server, viewer)
    finally:
        viewer.stop.set()
        thread.join(10)
        live.kill()
        live.wait(10)
        server.stop()


def metric(server: TidecastServer, name: str) -> float:
    text = httpx.get(f"{server.http}/metrics", headers=server.admin, timeout=5).text
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def get_from(source: str, url: str, timeout: float = 30) -> httpx.Response:
    """A GET from a client bound to another loopback address."""
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=timeout) as c:
        return c.get(url)


def timed_get(port: int, path: str) -> float:
    """One request on a new connection, by hand (no client library set-up in the time)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, sock.makefile("rb") as f:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        status = f.readline()
        f.read()
    assert status.startswith(b"HTTP/1.1 200"), (path, status)
    return time.monotonic() - t0


def test_slowloris_connections_are_cut_at_the_head_deadline(hostile: Hostile) -> None:
    server = hostile.server
    seen_before = hostile.viewer.segments
    sources = [f"127.0.0.{n}" for n in range(20, 30)]  # 10 addresses x 30 = 300, under the cap of 60 each

    async def attack() -> tuple[list[float], list[bytes], list[float], float]:
        opened: list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]] = []
        for src in sources:
            for _ in range(30):
                r, w = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", server.http_port, local_addr=(src, 0)), 5)
                w.write(b"GET /hls/live/source.m3u8 HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                opened.append((time.monotonic(), r, w))

        async def trickle() -> None:
            for _ in range(int(HEAD_TIMEOUT * 4)):  # one byte a second on every connection
                for _, _, w in opened:
                    if not w.is_closing():
                        w.write(b"a")
                await asyncio.sleep(1.0)

        async def lifetime(t0: float, r: asyncio.StreamReader) -> tuple[float, bytes]:
            got = b""
            try:
                async with asyncio.timeout(HEAD_TIMEOUT + 10):
                    while chunk := await r.read(4096):
                        got += chunk
            except ConnectionError:
                pass
            return time.monotonic() - t0, got

        sender = asyncio.create_task(trickle())
        ends = [asyncio.create_task(lifetime(t0, r)) for t0, r, _ in opened]
        await asyncio.sleep(1.0)
        held = await asyncio.to_thread(metric, server, "tidecast_http_connections")
        legit = []
        for _ in range(5):  # legitimate requests while every slowloris connection is held
            legit.append(await asyncio.to_thread(timed_get, server.http_port, "/api/v1/health"))
            legit.append(await asyncio.to_thread(timed_get, server.http_port, "/hls/live/source.m3u8"))
            await asyncio.sleep(0.2)
        done = await asyncio.gather(*ends)
        sender.cancel()
        for _, _, w in opened:
            w.close()
        return [d for d, _ in done], [g for _, g in done], legit, held

    quiet = [timed_get(server.http_port, p) for p in ("/api/v1/health", "/hls/live/source.m3u8") * 5]
    lifetimes, answers, legit, held = asyncio.run(attack())
    print(f"\nslowloris: {len(lifetimes)} connections, {held:.0f} held by the server at the peak; "
          f"each closed after {min(lifetimes):.2f}..{max(lifetimes):.2f} s (head deadline {HEAD_TIMEOUT:g} s); "
          f"legitimate requests during the attack: median {statistics.median(legit) * 1000:.1f} ms, "
          f"max {max(legit) * 1000:.1f} ms (without the attack: median {statistics.median(quiet) * 1000:.1f} ms)")  # fmt: skip
    assert held >= 300
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), {a[:20] for a in answers}
    assert max(lifetimes) < HEAD_TIMEOUT + 2.0 and min(lifetimes) > HEAD_TIMEOUT - 0.5
    assert max(legit) < 1.0
    hostile.viewer.check(seen_before)


def test_connections_over_the_per_address_cap_are_refused(hostile: Hostile) -> None:
    server = hostile.server

    async def flood() -> tuple[list[int | None], float]:
        conns = [await asyncio.open_connection("127.0.0.1", server.http_port, local_addr=("127.0.0.30", 0))
                 for _ in range(HTTP_PER_IP + 5)]  # fmt: skip

        async def first(r: asyncio.StreamReader) -> int | None:
            try:
                line = await asyncio.wait_for(r.readline(), 1.0)
            except TimeoutError:
                return None  # held: nothing said
            return int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else -1

        got = await asyncio.gather(*(first(r) for r, _ in conns))
        other = (await asyncio.to_thread(get_from, "127.0.0.31", f"{server.http}/api/v1/health")).status_code
        for _, w in conns:
            w.close()
        return got, float(other)

    got, other = asyncio.run(flood())
    print(f"\nper-address cap: {got.count(None)} held, {got.count(429)} refused with 429 from one address")
    assert got.count(None) == HTTP_PER_IP and got.count(429) == 5
    assert other == 200


def test_chat_sockets_that_never_join_are_closed_and_the_cap_holds(hostile: Hostile) -> None:
    server = hostile.server
    seen_before = hostile.viewer.segments
    url = f"ws://127.0.0.1:{server.http_port}/chat/live"

    async def idle_sockets() -> tuple[list[float], list[int], list[str], float]:
        socks: list[tuple[float, websockets.ClientConnection]] = []
        refused: list[str] = []
        for n in range(40, 50):  # 10 addresses x 50 = 500 sockets that never join
            src = f"127.0.0.{n}"
            batch = await asyncio.gather(*(websockets.connect(url, local_addr=(src, 0), open_timeout=10)
                                           for _ in range(CHAT_PER_IP)))  # fmt: skip
            socks += [(time.monotonic(), ws) for ws in batch]
            extra = await websockets.connect(url, local_addr=(src, 0), open_timeout=10)
            refused.append(json.loads(await asyncio.wait_for(extra.recv(), 5))["code"])
            await extra.close()
        # a real chatter beside them: joins, says something, hears it back
        t0 = time.monotonic()
        async with websockets.connect(url, open_timeout=5) as me:
            await me.send(json.dumps({"type": "join", "name": "legit"}))
            await me.send(json.dumps({"type": "message", "text": "still here"}))
            async with asyncio.timeout(5):
                while json.loads(await me.recv()).get("text") != "still here":
                    pass
        chat_took = time.monotonic() - t0

        async def closed_after(t0: float, ws: websockets.ClientConnection) -> tuple[float, int]:
            try:
                async with asyncio.timeout(JOIN_TIMEOUT + 10):
                    while True:
                        await ws.recv()
            except websockets.ConnectionClosed as exc:
                return time.monotonic() - t0, exc.rcvd.code if exc.rcvd else 0
            return float("inf"), 0

        ends = await asyncio.gather(*(closed_after(t0, ws) for t0, ws in socks))
        return [e for e, _ in ends], [c for _, c in ends], refused, chat_took

    lifetimes, codes, refused, chat_took = asyncio.run(idle_sockets())
    print(f"\nchat: {len(lifetimes)} sockets that never joined, closed after "
          f"{min(lifetimes):.2f}..{max(lifetimes):.2f} s (join deadline {JOIN_TIMEOUT:g} s); "
          f"{len(refused)} over the per-address cap refused; a real chatter's round trip took "
          f"{chat_took * 1000:.0f} ms")  # fmt: skip
    assert len(lifetimes) == 500 and set(codes) == {4008}
    assert max(lifetimes) < JOIN_TIMEOUT + 3.0
    assert refused == ["too_many_connections"] * 10
    assert chat_took < 2.0
    hostile.viewer.check(seen_before)


def test_x_forwarded_for_only_from_trusted_proxies(hostile: Hostile) -> None:
    url = f"ws://127.0.0.1:{hostile.server.http_port}/chat/live"

    async def from_address(src: str, n: int) -> int:
        """Sockets, each claiming another address; how many were refused for the cap."""
        socks = await asyncio.gather(*(
            websockets.connect(url, local_addr=(src, 0), open_timeout=5,
                               additional_headers={"X-Forwarded-For": f"203.0.113.{i}"})
            for i in range(n)))  # fmt: skip

        async def refused_one(ws: websockets.ClientConnection) -> bool:
            try:  # a refused socket hears why at once; an accepted one, nothing before it joins
                return bool(json.loads(await asyncio.wait_for(ws.recv(), 1.0)).get("code") == "too_many_connections")
            except TimeoutError:
                return False

        refused = sum(await asyncio.gather(*(refused_one(ws) for ws in socks)))
        for ws in socks:
            await ws.close()
        return refused

    spoofed = asyncio.run(from_address("127.0.0.50", CHAT_PER_IP + 5))
    trusted = asyncio.run(from_address(TRUSTED, CHAT_PER_IP + 5))
    assert spoofed == 5  # an untrusted client's header changes nothing: one address, one cap
    assert trusted == 0  # a trusted proxy's: every client its own


def test_operator_endpoints_need_the_token_or_the_operator_address(hostile: Hostile) -> None:
    s = hostile.server
    for path in ("/metrics", "/api/v1/transcode"):
        assert httpx.get(f"{s.http}{path}").status_code == 401
        assert httpx.get(f"{s.http}{path}", headers={"authorization": "Bearer nope"}).status_code == 401
        assert httpx.get(f"{s.http}{path}", headers=s.admin).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{OPERATOR_PORT}{path}").status_code == 200
    assert "tidecast_http_connections" in httpx.get(f"http://127.0.0.1:{OPERATOR_PORT}/metrics").text


def test_parallel_downloads_are_limited_made_once_and_cleaned(hostile: Hostile, clips: Clips) -> None:
    s = hostile.server
    key = s.create_stream("rec")
    subprocess.run(ffmpeg.publish_file_args(str(clips(320, 240, 30, 10, 300)), s.rtmp_url(key), ffmpeg.ffmpeg_exe()),
                   check=True, timeout=60, capture_output=True)  # fmt: skip

    def ended() -> dict[str, object] | None:
        rows = httpx.get(f"{s.http}/api/v1/broadcasts", params={"stream": "rec"}).json()
        return rows[0] if rows and rows[0]["vod"] and not rows[0]["live"] else None

    wait_for(lambda: ended() is not None, 30, what="the recorded broadcast")
    b = ended()
    assert b is not None
    url = f"{s.http}{b['download_url']}"
    work = s.data_dir / "download-tmp"
    most = 0
    sampling = threading.Event()

    def sample() -> None:
        nonlocal most
        while not sampling.wait(0.02):
            most = max(most, sum(1 for _ in work.iterdir()))

    async def crowd(sources: list[str], params: dict[str, str]) -> list[httpx.Response]:
        async def one(src: str) -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=src), timeout=60) as c:
                return await c.get(url, params=params)

        return await asyncio.gather(*(one(src) for src in sources))

    builds0 = metric(s, "tidecast_download_builds_total")
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    same_ip = asyncio.run(crowd(["127.0.0.60"] * 50, {}))
    t1 = time.monotonic()
    many_ips = asyncio.run(crowd([f"127.0.0.{n}" for n in range(61, 71)], {"start": "0", "end": "2"}))
    sampling.set()
    sampler.join(5)
    builds = metric(s, "tidecast_download_builds_total") - builds0
    ok = [r for r in same_ip if r.status_code == 200]
    limited = [r for r in same_ip if r.status_code == 429]
    print(f"\ndownloads: 50 at once from one address: {len(ok)} served, {len(limited)} refused (429) in "
          f"{t1 - t0:.2f} s; 10 addresses: {sum(r.status_code == 200 for r in many_ips)} served, "
          f"{sum(r.status_code == 429 for r in many_ips)} refused; {builds:.0f} ffmpeg runs; "
          f"at most {most} work dir(s) at once")  # fmt: skip
    assert len(ok) + len(limited) == 50 and 1 <= len(ok) <= 2
    assert all(r.headers.get("retry-after", "").isdigit() for r in limited)
    assert len({r.content for r in ok}) == 1 and ok[0].content[4:8] == b"ftyp"
    assert {r.status_code for r in many_ips} <= {200, 429} and 1 <= sum(r.status_code == 200 for r in many_ips) <= 4
    assert builds == 2  # one per file, however many asked for it
    assert most <= 1  # download_max_builds
    assert list(work.iterdir()) == []
    # asked again: from the store, no ffmpeg
    again = get_from("127.0.0.71", url)
    assert again.status_code == 200 and again.content == ok[0].content
    assert metric(s, "tidecast_download_builds_total") - builds0 == 2
    stored = list((s.data_dir / "media" / "hls" / "rec" / str(b["id"]) / "downloads").iterdir())
    assert len(stored) == 2 and all(p.suffix == ".mp4" for p in stored)
    hostile.viewer.check(0)
