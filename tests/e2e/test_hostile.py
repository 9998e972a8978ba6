"""Hostile clients over real sockets against one real ``tidecast serve`` with a live
stream: every attack of tests/e2e/hostile_attacks.py at once (slowloris HTTP connections,
RTMP clients trickling their handshake, chat sockets that never join, a crowd of MP4
downloads from one address, a thousand wrong stream keys from one address) while
Chromium plays the live stream, a second stream publishes, and legitimate requests are
timed; then connections over the per-address cap, spoofed X-Forwarded-For, operator
endpoints without a token. Other clients are other loopback addresses (client sockets
bound to 127.0.0.x).

Each test prints its figures (``-s`` shows them): how long the attacks' connections
lived, what the viewer saw, the time legitimate requests took during the attack."""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import httpx
import m3u8
import pytest
import websockets
from websockets.sync.client import connect as ws_connect

from tests.conftest import TidecastServer, free_port, start_server, wait_for
from tests.e2e.conftest import Clips
from tests.e2e.hostile_attacks import (
    Attacker,
    Downloads,
    IdleChat,
    Metric,
    Slowloris,
    Trickle,
    WrongKeys,
    download_crowd,
    idle_chat,
    slowloris,
    trickle_rtmp,
    wrong_keys,
)
from tests.e2e.watch import PlaylistWatcher
from tidecast import ffmpeg

pytestmark = [pytest.mark.e2e, pytest.mark.heavy]

HEAD_TIMEOUT = 3.0
JOIN_TIMEOUT = 3.0
RTMP_DEADLINE = 3.0  # s from connect to publish
HTTP_PER_IP = 60
CHAT_PER_IP = 50
MAX_FAILURES = 20  # failed publish attempts that ban an address...
BAN_SECONDS = 300  # ...for this long
TRUSTED = "127.0.0.9"
OPERATOR_PORT = free_port()
SEGMENT = 2.0  # s: the clips' GOP, so the segment duration


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, clips: Clips) -> Iterator[TidecastServer]:
    """The server, publishing ``live`` (10 minutes of a looped clip)."""
    env = {
        "TIDECAST_HTTP_HEAD_TIMEOUT": str(HEAD_TIMEOUT), "TIDECAST_HTTP_MAX_PER_IP": str(HTTP_PER_IP),
        "TIDECAST_CHAT_JOIN_TIMEOUT": str(JOIN_TIMEOUT), "TIDECAST_CHAT_MAX_PER_IP": str(CHAT_PER_IP),
        "TIDECAST_TRUSTED_PROXIES": TRUSTED, "TIDECAST_OPERATOR_LISTEN": f"127.0.0.1:{OPERATOR_PORT}",
        "TIDECAST_DOWNLOAD_MAX_PER_IP": "2", "TIDECAST_DOWNLOAD_MAX_TOTAL": "4", "TIDECAST_DOWNLOAD_MAX_BUILDS": "1",
        "TIDECAST_RTMP_HANDSHAKE_TIMEOUT": str(RTMP_DEADLINE),
        "TIDECAST_INGEST_MAX_FAILURES": str(MAX_FAILURES), "TIDECAST_INGEST_BAN_SECONDS": str(BAN_SECONDS),
    }  # fmt: skip
    server = start_server(tmp_path_factory.mktemp("hostile") / "data", "--reconnect-grace", "1", env=env)
    live = publish(server, clips, "live")
    try:
        wait_for(lambda: playlist(server, "live") is not None, 30, what="the live playlist")
        yield server
    finally:
        live.kill()
        live.wait(10)
        server.stop()


def publish(server: TidecastServer, clips: Clips, name: str, seconds: int = 10,
            loops: int = 60) -> subprocess.Popen[bytes]:  # fmt: skip
    """A real ffmpeg publishing a test clip (``loops`` more times) to a new stream."""
    args = ffmpeg.publish_file_args(str(clips(320, 240, 30, seconds, 300)),
                                    server.rtmp_url(server.create_stream(name)), ffmpeg.ffmpeg_exe(), loops=loops)  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def playlist(server: TidecastServer, name: str) -> m3u8.M3U8 | None:
    r = httpx.get(f"{server.http}/hls/{name}/source.m3u8", timeout=5)
    return m3u8.loads(r.text) if r.status_code == 200 else None


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


def addresses(first: int, waves: int, per_wave: int) -> list[list[str]]:
    """Loopback addresses 127.0.0.<first>.., ``per_wave`` for each wave."""
    assert first + waves * per_wave <= 255
    return [[f"127.0.0.{first + w * per_wave + i}" for i in range(per_wave)] for w in range(waves)]


# ------------------------------------------------------------------ all at once
WAVES = 3  # each holding attack three times over: about 12 s of attack
TAIL = 6.0  # s the viewer is watched after the attack: about its buffer, so a late stall shows
# The longest a legitimate request may take during the attack. Most take a few ms; those
# sent while a wave of 500 chat sockets connects wait behind them (the server spends some
# ms of CPU on each socket's upgrade): up to about 1.1 s on 2 cores with nothing else running.
LEGIT_MAX = 2.0


class Legit(threading.Thread):
    """Legitimate requests, timed, until stopped: health and the live playlist every 0.25 s
    (each on a new connection), a chat round trip (connect, join, say something, hear it
    back) every second."""

    def __init__(self, server: TidecastServer) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.times: dict[str, list[tuple[float, float]]] = {"health": [], "playlist": [], "chat": []}
        self.errors: list[str] = []
        self.stop = threading.Event()

    def chat(self, n: int) -> float:
        text = f"still here {n}"
        t0 = time.monotonic()
        with ws_connect(f"ws://127.0.0.1:{self.server.http_port}/chat/live", open_timeout=5, close_timeout=2) as ws:
            ws.send(json.dumps({"type": "join", "name": f"legit{n}"}))
            ws.send(json.dumps({"type": "message", "text": text}))
            for _ in range(200):  # the room's history comes first
                if json.loads(ws.recv(timeout=max(0.01, t0 + 5 - time.monotonic()))).get("text") == text:
                    return time.monotonic() - t0
        raise AssertionError(f"{text!r} never came back")

    def run(self) -> None:
        port = self.server.http_port
        kinds: dict[str, Callable[[int], float]] = {
            "health": lambda _: timed_get(port, "/api/v1/health"),
            "playlist": lambda _: timed_get(port, "/hls/live/source.m3u8"),
            "chat": self.chat,
        }
        for n in range(2400):  # 10 minutes at most
            if self.stop.wait(0.25):
                return
            for kind, run in kinds.items():
                if kind == "chat" and n % 4:
                    continue
                try:
                    self.times[kind].append((time.monotonic(), run(n)))
                except (OSError, AssertionError, websockets.WebSocketException) as exc:
                    self.errors.append(f"{kind}: {exc!r}")

    def between(self, kind: str, t0: float, t1: float) -> list[float]:
        return [took for at, took in self.times[kind] if t0 <= at <= t1]


class Growth(PlaylistWatcher):
    """PlaylistWatcher on one stream (it never goes backwards, lists nothing missing) that
    also notes when the playlist grew, and any discontinuity it lists."""

    def __init__(self, server: TidecastServer, stream: str) -> None:
        super().__init__([server.http], stream, ("source",), interval=0.2)
        self.grew: list[tuple[float, int]] = []  # (when, next media sequence number)
        self.discontinuities: set[int] = set()

    def _check(self, client: httpx.Client, base: str, r: str, pl: m3u8.M3U8) -> None:
        super()._check(client, base, r, pl)
        first = pl.media_sequence or 0
        self.discontinuities |= {first + n for n, seg in enumerate(pl.segments) if seg.discontinuity}
        nxt = self.last[r][1]
        if not self.grew or nxt > self.grew[-1][1]:
            self.grew.append((time.monotonic(), nxt))

    def longest_wait(self, t0: float, t1: float) -> float:
        """The longest time within t0..t1 without a new segment."""
        times = [t0, *(at for at, _ in self.grew if t0 < at < t1), t1]
        return max(b - a for a, b in zip(times, times[1:], strict=False))

    def segments_between(self, t0: float, t1: float) -> int:
        inside = [n for at, n in self.grew if t0 <= at <= t1]
        before = [n for at, n in self.grew if at < t0]
        return (inside[-1] - before[-1]) if inside and before else 0


PLAYER_JS = """() => ({ stats: window.tidecastPlayer.stats(), stalls: window.tidecastPlayer.stalls.length,
                        errors: window.tidecastPlayer.errors.slice() })"""


def attackers(s: TidecastServer, go: EventType, download_url: str, stored_dir: str, brute_key: str) -> list[Attacker]:
    """The five attacks, each in a process of its own, to start at ``go``: the three that
    hold connections at once; the wrong keys and the download crowd as soon as each of
    those has its first wave open."""
    holding = [
        Attacker(go, slowloris, s.http_port, addresses(100, WAVES, 10), 30, HEAD_TIMEOUT,
                 Metric(s.http, s.admin_token, "tidecast_http_connections"), holds=True),
        Attacker(go, trickle_rtmp, s.rtmp_port, addresses(160, WAVES, 30), 10, RTMP_DEADLINE, holds=True),
        Attacker(go, idle_chat, f"ws://127.0.0.1:{s.http_port}/chat/live", addresses(130, WAVES, 10), CHAT_PER_IP,
                 JOIN_TIMEOUT, holds=True),
    ]  # fmt: skip
    after = [a.opened for a in holding]
    return [
        *holding,
        Attacker(go, wrong_keys, s.rtmp_port, "127.0.0.4", 1000, brute_key, "127.0.0.3", MAX_FAILURES, BAN_SECONDS,
                 after=after),
        Attacker(go, download_crowd, download_url, s.data_dir / "download-tmp", s.data_dir / stored_dir,
                 Metric(s.http, s.admin_token, "tidecast_download_builds_total"), "127.0.0.60", 50,
                 [f"127.0.0.{n}" for n in range(61, 71)], "127.0.0.71", 2, after=after),
    ]  # fmt: skip


def recorded(s: TidecastServer, stream: str) -> dict[str, Any] | None:
    rows = httpx.get(f"{s.http}/api/v1/broadcasts", params={"stream": stream}, timeout=5).json()
    return rows[0] if rows and rows[0]["vod"] and not rows[0]["live"] else None


def cpu_seconds(pid: int) -> float:
    """The CPU time a process has used (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:.1f} ms, max {max(values) * 1000:.1f} ms" if values else "-"


@pytest.mark.browser
def test_every_attack_at_once_while_a_viewer_plays_and_a_stream_publishes(hostile: TidecastServer,
                                                                         clips: Clips) -> None:  # fmt: skip
    from tests.e2e.browser import chromium_page

    s = hostile
    brute_key = s.create_stream("brute")
    rec = publish(s, clips, "rec", seconds=6, loops=0)  # recorded: the downloads' broadcast
    second = publish(s, clips, "second")  # the stream that keeps publishing through the attack
    growth = Growth(s, "second")
    legit = Legit(s)
    samples: list[tuple[float, dict[str, Any]]] = []
    go = multiprocessing.get_context("spawn").Event()
    attacks: list[Attacker] = []
    try:
        with chromium_page() as page:
            page.goto(f"{s.http}/watch/live")  # type: ignore[attr-defined]
            page.wait_for_function("window.tidecastPlayer.state === 'playing' && "  # type: ignore[attr-defined]
                                   "window.tidecastPlayer.stats().decodedFrames > 0", timeout=60_000)  # fmt: skip
            wait_for(lambda: playlist(s, "second") is not None, 30, what="the second stream's playlist")
            wait_for(lambda: recorded(s, "rec") is not None, 60, what="the recorded broadcast")
            b = recorded(s, "rec")
            assert b is not None
            attacks = attackers(s, go, f"{s.http}{b['download_url']}", f"media/hls/rec/{b['id']}/downloads",
                                brute_key)  # fmt: skip
            growth.start()
            legit.start()
            for _ in range(3):  # before the attack: what quiet looks like
                page.wait_for_timeout(1000)  # type: ignore[attr-defined]
                samples.append((time.monotonic(), page.evaluate(PLAYER_JS)))  # type: ignore[attr-defined]
            for a in attacks:
                assert a.ready.wait(30), f"{a.name} did not start"
            cpu0, t0 = cpu_seconds(s.proc.pid), time.monotonic()
            go.set()
            t1 = math.inf
            for _ in range(180):  # the attack (about 15 s; 3 minutes at most), then the tail
                page.wait_for_timeout(1000)  # type: ignore[attr-defined]
                samples.append((time.monotonic(), page.evaluate(PLAYER_JS)))  # type: ignore[attr-defined]
                if t1 == math.inf and all(a.done() for a in attacks):
                    t1 = max(a.result(1)[1] for a in attacks)  # (an attack's error is raised here)
                    cpu = cpu_seconds(s.proc.pid) - cpu0
                if samples[-1][0] >= t1 + TAIL:
                    break
            assert t1 < math.inf, "the attacks did not end"
            results = [a.result(1) for a in attacks]
    finally:
        for a in attacks:
            a.close()
        legit.stop.set()
        legit.join(15)
        growth.finish()
        still_publishing = second.poll() is None
        for p in (rec, second):
            p.kill()
            p.wait(10)
    slow, trickle, chat, brute, downloads = (value for value, _ in results)
    assert isinstance(slow, Slowloris) and isinstance(trickle, Trickle) and isinstance(chat, IdleChat)
    assert isinstance(brute, WrongKeys) and isinstance(downloads, Downloads)
    log = s.log()

    # what each side saw, printed before anything is asserted
    quiet = [p for t, p in samples if t < t0]
    watched = [p for t, p in samples if t >= t0]
    before = quiet[-1]
    decoded = [p["stats"]["decodedFrames"] for p in [before, *watched]]
    latency = [p["stats"]["latencyS"] for p in watched if p["stats"]["latencyS"] is not None] or [math.nan]
    dropped = watched[-1]["stats"]["droppedFrames"] - before["stats"]["droppedFrames"]
    stalls = watched[-1]["stalls"] - before["stalls"]
    player_errors = watched[-1]["errors"][len(before["errors"]) :]
    wait = growth.longest_wait(t0, t1)
    grew = growth.segments_between(t0, t1)
    sessions = log.count("second: live from")
    during = {k: legit.between(k, t0, t1) for k in legit.times}
    calm = {k: legit.between(k, 0, t0) for k in legit.times}
    slowest, slowest_at = max(((took, at - t0) for v in legit.times.values() for at, took in v if t0 <= at <= t1),
                              default=(math.inf, math.nan))  # fmt: skip
    for line in (slow.figures(), trickle.figures(), chat.figures(), brute.figures(),
                 downloads.figures()):  # fmt: skip
        print(f"\n{line}", end="")
    print(f"\nviewer (Chromium, hls.js): watched {samples[-1][0] - t0:.0f} s from the attack's start: {stalls} "
          f"stalls, frames decoded {decoded[0]} -> {decoded[-1]}, {dropped} dropped; latency "
          f"{min(latency):.1f}..{max(latency):.1f} s; buffer at least "
          f"{min(p['stats']['bufferS'] for p in watched):.1f} s; player errors {player_errors}"  # fmt: skip
          f"\nsecond stream: {grew} new segments in the {t1 - t0:.1f} s attack, at most {wait:.1f} s without "
          f"one; gaps {sorted(growth.gaps_seen.get('source', ()))}, discontinuities {sorted(growth.discontinuities)}; "
          f"{sessions} publish session(s)"
          "\nlegitimate requests during the attack: "
          + "; ".join(f"{k} {ms(v)} ({len(v)}; before it: {ms(calm[k])})" for k, v in during.items())
          + f"\nall at once: {len(slow.lifetimes)} slowloris, {len(trickle.lifetimes)} trickling RTMP "
          f"clients, {len(chat.lifetimes)} idle chat sockets, {len(downloads.same_ip)} + "
          f"{len(downloads.many_ips)} downloads and {len(brute.verdicts)} wrong keys in {t1 - t0:.1f} s; "
          f"the server used {cpu / (t1 - t0):.0%} of a core meanwhile; {stalls} stalls for the viewer, at most "
          f"{wait:.1f} s between the second stream's segments, legitimate requests at most {slowest * 1000:.0f} ms (sent {slowest_at:.1f} s into the attack)")  # fmt: skip

    # each attack met its limit
    slow.check()
    trickle.check()
    assert f"no publish within {RTMP_DEADLINE:.0f} s of connecting" in log
    chat.check()
    brute.check(log)
    downloads.check()

    # the viewer: Chromium kept playing, with no stall, from before the attack to its tail
    assert all(p["stats"]["state"] == "playing" for p in watched)
    assert stalls == 0 and all(p["stats"]["stalledMs"] == 0 for p in watched), [p["stats"] for p in watched]
    assert watched[-1]["stats"]["bufferStalls"] == before["stats"]["bufferStalls"]
    assert all(b > a for a, b in zip(decoded, decoded[1:], strict=False)), decoded
    assert player_errors == []
    assert max(latency) < 15

    # the second stream kept publishing: its playlist grew all along, in one piece, one session
    assert not growth.problems, growth.problems
    assert not growth.gaps_seen and not growth.discontinuities
    assert grew >= (t1 - t0) / SEGMENT - 2
    assert wait < 2 * SEGMENT + 1.0
    assert still_publishing and sessions == 1

    # legitimate requests were answered promptly throughout
    assert all(during.values()), {k: len(v) for k, v in during.items()}
    assert not legit.errors, legit.errors
    assert all(statistics.median(v) < 0.1 for v in during.values())
    assert slowest < LEGIT_MAX
    assert s.alive()
    assert "Traceback" not in log


# ------------------------------------------------------------------ caps, proxies, operator endpoints
def test_connections_over_the_per_address_cap_are_refused(hostile: TidecastServer) -> None:
    server = hostile

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


def test_x_forwarded_for_only_from_trusted_proxies(hostile: TidecastServer) -> None:
    url = f"ws://127.0.0.1:{hostile.http_port}/chat/live"

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


def test_operator_endpoints_need_the_token_or_the_operator_address(hostile: TidecastServer) -> None:
    s = hostile
    for path in ("/metrics", "/api/v1/transcode"):
        assert httpx.get(f"{s.http}{path}").status_code == 401
        assert httpx.get(f"{s.http}{path}", headers={"authorization": "Bearer nope"}).status_code == 401
        assert httpx.get(f"{s.http}{path}", headers=s.admin).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{OPERATOR_PORT}{path}").status_code == 200
    assert "tidecast_http_connections" in httpx.get(f"http://127.0.0.1:{OPERATOR_PORT}/metrics").text
