"""``tidecast bench chat``: one busy room, tidecast's chat vs a bare websockets relay.

N clients join one room; a publisher sends M messages/s for S seconds, each
carrying its send time; every client records when each message arrives. The
same load runs against (a) a bare ``websockets.broadcast`` server (the
baseline) and (b) ``tidecast serve``'s chat, both as separate processes on
loopback, one after the other in one invocation. Reported: delivered
messages/s and delivery latency p50/p99 for each, and the throughput ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import websockets


@dataclass
class Result:
    delivered: int = 0
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    disconnected: int = 0
    sent: list[float] = field(default_factory=list)

    def slowest(self, n: int = 5) -> str:
        if not self.sent:
            return ""
        t0 = min(self.sent)
        worst = sorted(zip(self.latencies, self.sent, strict=True), reverse=True)[:n]
        return ", ".join(f"{lat * 1000:.0f} ms at +{ts - t0:.1f} s" for lat, ts in worst)

    def line(self, name: str) -> str:
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) * 1000 if lat else float("nan")
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000 if lat else float("nan")
        return (f"{name:<28} delivered {self.delivered / self.seconds:9.0f} msg/s   "
                f"latency p50 {p50:7.1f} ms  p99 {p99:7.1f} ms   dropped clients {self.disconnected}")  # fmt: skip

    @property
    def p99_ms(self) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000 if lat else float("inf")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


MARKER = b'"type":"message"'


class CountingClient(asyncio.Protocol):
    """A cheap WebSocket client: handshake, optional join, then count message events.

    Most of the room is made of these, so the load generator's own CPU does not
    limit what the server under test can deliver. Latency is sampled by full
    clients (``websockets``) alongside.
    """

    def __init__(self, path: str, join: str | None, res: Result, ready: asyncio.Event) -> None:
        self.path, self.join, self.res, self.ready = path, join, res, ready
        self.head = b""
        self.upgraded = False
        self.tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                         "Sec-WebSocket-Version: 13\r\n\r\n").encode())  # fmt: skip

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                self.res.disconnected += 1
                self.ready.set()
                return
            self.upgraded = True
            if self.join and self.transport is not None:
                payload = self.join.encode()
                mask = os.urandom(4)
                masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                self.transport.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
            self.ready.set()
        buf = self.tail + data
        self.res.delivered += buf.count(MARKER)
        self.tail = buf[-(len(MARKER) - 1):]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.is_set():
            self.ready.set()


async def run_load(
    host: str, port: int, path: str, clients: int, rate: float, seconds: float,
    join: Callable[[int], str | None], publisher_url: str, publisher_join: str | None,
    sampled: int = 50,
) -> Result:  # fmt: skip
    res = Result()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def sampler(i: int, ready: asyncio.Event) -> None:
        try:
            async with websockets.connect(f"ws://{host}:{port}{path}", max_size=2**20, open_timeout=60) as ws:
                first = join(i)
                if first:
                    await ws.send(first)
                ready.set()
                while not stop.is_set():
                    try:
                        raw = await asyncio.wait_for(ws.recv(), 0.5)
                    except TimeoutError:
                        continue
                    now = time.time()
                    data = json.loads(raw)
                    if data.get("type") == "message":
                        res.delivered += 1
                        res.latencies.append(now - float(data["text"]))
                        res.sent.append(float(data["text"]))
        except (websockets.ConnectionClosed, OSError):
            res.disconnected += 1
            ready.set()

    readies = []
    tasks = []
    transports = []
    for i in range(clients):
        ready = asyncio.Event()
        readies.append(ready)
        if i < sampled:
            tasks.append(asyncio.create_task(sampler(i, ready)))
        else:
            proto = functools.partial(CountingClient, path, join(i), res, ready)
            t, _ = await loop.create_connection(proto, host, port)
            transports.append(t)
        if i % 100 == 99:
            await asyncio.sleep(0.05)  # don't SYN-flood our own listener
    for r in readies:
        await r.wait()
    await asyncio.sleep(1.5)
    async with websockets.connect(publisher_url) as pub:
        if publisher_join:
            await pub.send(publisher_join)
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        n = 0
        while (elapsed := time.monotonic() - t0) < seconds:
            target = int(elapsed * rate) + 1
            while n < target:
                await pub.send(json.dumps({"type": "message", "text": f"{time.time():.6f}"}, separators=(",", ":")))
                n += 1
            await asyncio.sleep(max(0.0, (n / rate) - (time.monotonic() - t0)))
        await asyncio.sleep(1.5)  # let the last ones arrive
        res.seconds = time.monotonic() - t0
    stop.set()
    await asyncio.gather(*tasks)
    for t in transports:
        t.abort()
    return res


async def run(clients: int, rate: float, seconds: float) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, clients * 3 + 1000))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    print(f"{clients} clients in one room, {rate:g} messages/s for {seconds:g} s "
          f"(= {clients * rate:.0f} deliveries/s offered)", flush=True)  # fmt: skip

    # (a) the bare websockets.broadcast baseline
    port = _free_port()
    base = await asyncio.create_subprocess_exec(sys.executable, "-m", "tidecast.bench.chat_baseline",
                                                "--port", str(port))  # fmt: skip
    try:
        await _wait_port(port)
        url = f"ws://127.0.0.1:{port}/"
        a = await run_load("127.0.0.1", port, "/", clients, rate, seconds, lambda i: None, url, None)
    finally:
        base.terminate()
        await base.wait()
    print(a.line("(a) bare websockets.broadcast"), flush=True)

    # (b) tidecast's chat in `tidecast serve`
    with tempfile.TemporaryDirectory(prefix="tidecast-bench-") as tmp:
        http, rtmp = _free_port(), _free_port()
        env = {**os.environ, "TIDECAST_HOST": "127.0.0.1", "TIDECAST_HTTP_PORT": str(http),
               "TIDECAST_RTMP_PORT": str(rtmp), "TIDECAST_DATA_DIR": tmp, "TIDECAST_LADDER": "none",
               # every simulated client comes from 127.0.0.1: no per-address caps here
               "TIDECAST_HTTP_MAX_PER_IP": "8192", "TIDECAST_CHAT_MAX_PER_IP": "100000"}  # fmt: skip
        srv = await asyncio.create_subprocess_exec(sys.executable, "-m", "tidecast", "serve", env=env,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            await _wait_port(http)
            await asyncio.sleep(0.5)
            admin = (await asyncio.to_thread(Path(tmp, "admin-token").read_text)).strip()
            auth = {"authorization": f"Bearer {admin}"}
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http}", headers=auth) as api:
                (await api.post("/api/v1/streams", json={"name": "bench"})).raise_for_status()
                tok = (await api.post("/api/v1/streams/bench/chat-tokens",
                                      json={"name": "bench-host", "role": "streamer"})).json()["token"]  # fmt: skip
            url = f"ws://127.0.0.1:{http}/chat/bench"
            b = await run_load("127.0.0.1", http, "/chat/bench", clients, rate, seconds,
                               lambda i: json.dumps({"type": "join", "name": f"viewer{i}"}),
                               f"{url}?token={tok}", json.dumps({"type": "join"}))  # fmt: skip
        finally:
            srv.terminate()
            try:
                await asyncio.wait_for(srv.wait(), 10)
            except TimeoutError:
                srv.kill()
                await srv.wait()
    print(b.line("(b) tidecast chat"))
    print(f"    slowest (a): {a.slowest()}\n    slowest (b): {b.slowest()}")
    ratio = (b.delivered / b.seconds) / max(1e-9, a.delivered / a.seconds)
    offered = clients * round(rate * seconds)
    print(f"delivered of offered: (a) {a.delivered / offered:.2%}  (b) {b.delivered / offered:.2%}"
          "  (latency sampled by 50 full clients)")  # fmt: skip
    # equal counts give 1.000; allow one delivery in a thousand of timing noise
    ok = ratio >= 0.999 and b.p99_ms < 200
    print(f"throughput ratio (b)/(a) = {ratio:.3f} (target >= 1.0); tidecast p99 {b.p99_ms:.1f} ms "
          f"(target < 200 ms): {'met' if ok else 'NOT met'}")  # fmt: skip
    return 0 if ok else 1


async def main(args: argparse.Namespace) -> int:
    return await run(args.clients, args.rate, args.seconds)


