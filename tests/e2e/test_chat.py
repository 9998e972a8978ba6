"""Chat over real WebSockets against a real server: ordering and history, moderation,
limits, refusal errors, slow clients, and tokens that make moderators."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import TidecastServer, start_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TidecastServer]:
    s = start_server(tmp_path_factory.mktemp("chat") / "data", env={"TIDECAST_CHAT_BLOCKED_WORDS": "spoiler, casino"})
    s.create_stream("room")
    yield s
    s.stop()


class Client:
    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws

    async def send(self, **event: Any) -> None:
        await self.ws.send(json.dumps(event))

    async def next(self, kind: str | None = None, timeout: float = 5) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                ev: dict[str, Any] = json.loads(await self.ws.recv())
                if kind is None or ev["type"] == kind:
                    return ev

    async def error(self) -> dict[str, Any]:
        return await self.next("error")


async def connect(server: TidecastServer, name: str | None, token: str | None = None,
                  source: str = "127.0.0.1") -> Client:  # fmt: skip
    url = f"ws://127.0.0.1:{server.http_port}/chat/room" + (f"?token={token}" if token else "")
    c = Client(await websockets.connect(url, max_size=2**20, local_addr=(source, 0)))
    await c.send(type="join", **({"name": name} if name else {}))
    welcome = await c.next("welcome")
    c.welcome = welcome  # type: ignore[attr-defined]
    return c


def raw_ws_join(port: int, name: str) -> socket.socket:
    """A WebSocket client by hand: handshake, one masked join frame, then silence."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /chat/room HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    payload = json.dumps({"type": "join", "name": name}).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return sock


def token(server: TidecastServer, name: str, role: str = "moderator") -> str:
    r = httpx.post(f"{server.http}/api/v1/streams/room/chat-tokens", json={"name": name, "role": role},
                   headers={"authorization": f"Bearer {server.admin_token}"})  # fmt: skip
    r.raise_for_status()
    return str(r.json()["token"])


async def test_order_and_history(chat_server: TidecastServer) -> None:
    a, b = await connect(chat_server, "ann"), await connect(chat_server, "bob")
    for i in range(10):
        await (a if i % 2 == 0 else b).send(type="message", text=f"hello {i}")
        await asyncio.sleep(0.25)  # stay under the per-connection rate limit
    for c in (a, b):
        got = [(await c.next("message"))["text"] for _ in range(10)]
        assert got == [f"hello {i}" for i in range(10)]
    late = await connect(chat_server, "cat")
    history = [m["text"] for m in late.welcome["history"]]  # type: ignore[attr-defined]
    assert history[-10:] == [f"hello {i}" for i in range(10)]
    assert late.welcome["viewers"] >= 3  # type: ignore[attr-defined]
    taken = Client(await websockets.connect(f"ws://127.0.0.1:{chat_server.http_port}/chat/room"))
    await taken.send(type="join", name="ANN")
    assert (await taken.error())["code"] == "name_taken"
    for c in (a, b, late, taken):
        await c.ws.close()


async def test_bad_input_gets_clear_errors(chat_server: TidecastServer) -> None:
    c = await connect(chat_server, "dave")
    await c.send(type="message", text="x" * 501)
    assert (await c.error())["code"] == "too_long"
    await c.send(type="message", text="the ending is a SPOILER")
    assert (await c.error())["code"] == "blocked_word"
    await c.send(type="message", text="bell\x07")
    assert (await c.error())["code"] == "control_chars"
    await c.ws.send("{not json")
    assert (await c.error())["code"] == "bad_json"
    await c.send(type="ban", user="ann")
    assert (await c.error())["code"] == "forbidden"
    await c.ws.send(json.dumps({"type": "message", "text": "y" * 5000}))
    assert (await c.error())["code"] == "too_large"
    with pytest.raises(websockets.ConnectionClosed):  # beyond the frame cap: the socket closes
        await c.ws.send("z" * 100_000)
        await c.next(timeout=5)
    # the server still serves others
    d = await connect(chat_server, "dora")
    await d.ws.close()
    bad = Client(await websockets.connect(f"ws://127.0.0.1:{chat_server.http_port}/chat/room?token=forged.sig"))
    assert (await bad.error())["code"] == "bad_token"
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(f"ws://127.0.0.1:{chat_server.http_port}/chat/no-such-stream")


async def test_rate_limit_and_slow_mode(chat_server: TidecastServer) -> None:
    mod = await connect(chat_server, None, token(chat_server, "modmary"))
    assert mod.welcome["you"] == {"name": "modmary", "role": "moderator"}  # type: ignore[attr-defined]
    eve = await connect(chat_server, "eve")
    for i in range(6):
        await eve.send(type="message", text=f"spam {i}")
    assert (await eve.error())["code"] == "rate_limited"
    await asyncio.sleep(2)
    await mod.send(type="slow", seconds=3)
    assert (await eve.next("slow"))["seconds"] == 3
    await asyncio.sleep(3.1)  # her last accepted message was under 3 s ago
    await eve.send(type="message", text="first")
    await eve.next("message")
    await eve.send(type="message", text="second")
    assert (await eve.error())["code"] == "slow_mode"
    await mod.send(type="slow", seconds=0)
    await eve.next("slow")
    for c in (mod, eve):
        await c.ws.close()


async def test_delete_timeout_ban(chat_server: TidecastServer) -> None:
    mod = await connect(chat_server, None, token(chat_server, "modmax"))
    # fred on an address of his own: bans and timeouts hold for his address too
    fred, gus = await connect(chat_server, "fred", source="127.0.0.5"), await connect(chat_server, "gus")
    await fred.send(type="message", text="something rude")
    msg = await gus.next("message")
    await mod.send(type="delete", id=msg["id"])
    assert (await gus.next("delete"))["id"] == msg["id"]
    later = await connect(chat_server, "hank")  # deleted messages are gone from history too
    assert msg["id"] not in [m["id"] for m in later.welcome["history"]]  # type: ignore[attr-defined]
    await mod.send(type="timeout", user="fred", seconds=30)
    await gus.next("timeout")
    await fred.send(type="message", text="let me talk")
    assert (await fred.error())["code"] == "timed_out"
    await mod.send(type="ban", user="fred")
    assert (await gus.next("ban"))["user"] == "fred"
    assert (await fred.error())["code"] == "banned"
    with pytest.raises(websockets.ConnectionClosed):
        await fred.next(timeout=5)
    again = Client(await websockets.connect(f"ws://127.0.0.1:{chat_server.http_port}/chat/room"))
    await again.send(type="join", name="Fred")  # a new connection, the same identity
    assert (await again.error())["code"] == "banned"
    # his address is refused whatever the name, at once
    other = Client(await websockets.connect(f"ws://127.0.0.1:{chat_server.http_port}/chat/room",
                                            local_addr=("127.0.0.5", 0)))  # fmt: skip
    assert (await other.error())["message"] == "your address is banned from this chat"
    assert "moderation: modmax banned fred" in chat_server.log()
    for c in (mod, gus, later, again):
        await c.ws.close()


async def test_a_stuck_client_does_not_delay_the_others(chat_server: TidecastServer) -> None:
    streamer = await connect(chat_server, None, token(chat_server, "host", "streamer"))
    healthy = [await connect(chat_server, f"ok{i}") for i in range(3)]
    # a client that joins and then never reads another byte (raw socket, tiny window)
    stuck = raw_ws_join(chat_server.http_port, "stuck")
    latencies: list[float] = []
    big = "x" * 480
    after_drop = 0
    for i in range(12_000):  # enough to fill the socket buffers (MBs) and then its queue
        await streamer.send(type="message", text=f"{i} {big}")
        if i % 250 == 0:
            t0 = time.perf_counter()
            for h in healthy:
                while (await h.next("message"))["text"].split()[0] != str(i):
                    pass
            latencies.append(time.perf_counter() - t0)
            if "is not reading; disconnecting it" in chat_server.log():
                after_drop += 1
                if after_drop > 3:
                    break
    assert max(latencies) < 0.5, f"healthy clients were delayed: {max(latencies):.3f} s"
    assert "is not reading; disconnecting it" in chat_server.log(), chat_server.log()[-800:]
    for c in [streamer, *healthy]:
        await c.ws.close()
    stuck.close()
