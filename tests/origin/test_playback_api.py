"""The password exchange behind a trusted edge: wrong passwords are counted per client
address as ``X-Forwarded-For`` from a trusted proxy says (not per edge), a spoofed header
from anyone else counts for its sender, and the tokenized master URL keeps the scheme the
client used (the edge's ``X-Forwarded-Proto``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import httpx
from fastapi import FastAPI

from tidecast.access import tokens
from tidecast.config import Settings
from tidecast.db.playback import Playback
from tidecast.db.repo import Database
from tidecast.live import LiveBroadcast
from tidecast.netaddr import TrustedProxies
from tidecast.origin.app import request_ip, request_scheme
from tidecast.origin.playback import PlaybackGuard
from tidecast.origin.playback_api import playback_router

SECRET = "test-secret-0123456789"
EDGE = "10.0.0.1"


class NoLive:
    def live(self) -> Mapping[str, LiveBroadcast]:
        return {}


def _app(db: Database) -> FastAPI:
    proxies = TrustedProxies.parse(EDGE)
    guard = PlaybackGuard(db, SECRET, NoLive())
    app = FastAPI()
    app.include_router(playback_router(guard, Settings(password_attempts=2), lambda: None,
                                       lambda r: request_ip(proxies, r),
                                       lambda r: request_scheme(proxies, r)))  # fmt: skip
    return app


async def test_wrong_passwords_count_per_forwarded_address(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        db.create_stream("pw")
        Playback(db).set_policy(
            "pw", access="password", password_hash=tokens.hash_password("right one")
        )
        app = _app(db)

        async def post(peer: str, password: str, headers: dict[str, str]) -> httpx.Response:
            transport = httpx.ASGITransport(app=app, client=(peer, 40000))
            async with httpx.AsyncClient(
                transport=transport, base_url="http://edge.example"
            ) as client:
                return await client.post("/api/v1/streams/pw/playback-session", json={"password": password},
                                         headers=headers)  # fmt: skip

        viewer_a = {"x-forwarded-for": "203.0.113.1"}
        assert [(await post(EDGE, "no", viewer_a)).status_code for _ in range(3)] == [403, 403, 429]
        # another viewer behind the same edge is not held by the first one's guesses
        viewer_b = {"x-forwarded-for": "203.0.113.2", "x-forwarded-proto": "https"}
        assert (await post(EDGE, "no", viewer_b)).status_code == 403
        ok = await post(EDGE, "right one", viewer_b)
        assert ok.status_code == 200, ok.text
        assert ok.json()["master_url"].startswith("https://edge.example/hls/pw/~")
        assert "Secure" in ok.headers["set-cookie"]
        # a client that is no proxy cannot pass for someone else, nor change the scheme
        spoofed = {"x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https"}
        assert [(await post("198.51.100.7", "no", spoofed)).status_code for _ in range(3)] == [
            403,
            403,
            429,
        ]
        assert (
            await post("198.51.100.8", "no", {"x-forwarded-for": "198.51.100.7"})
        ).status_code == 403
        plain = await post("198.51.100.8", "right one", spoofed)
        assert plain.status_code == 200 and plain.json()["master_url"].startswith(
            "http://edge.example/"
        )
    finally:
        db.close()


async def test_latency_per_stream_and_its_rules(tmp_path: Path) -> None:
    """A stream follows the node's ll_hls unless set "low" or "standard"; AES-128 streams
    play on whole segments; "low" with AES-128, or on a node without LL-HLS, is refused."""
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        for name in ("a", "b"):
            db.create_stream(name)
        guard = PlaybackGuard(db, SECRET, NoLive())

        async def put(node_ll: bool, name: str, body: dict[str, str]) -> httpx.Response:
            app = FastAPI()
            app.include_router(playback_router(guard, Settings(ll_hls=node_ll), lambda: None))
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://o") as client:
                return await client.put(f"/api/v1/streams/{name}", json=body)

        r = await put(True, "a", {})
        assert r.status_code == 200 and (r.json()["latency"], r.json()["low_latency"]) == ("", True)
        r = await put(False, "a", {})
        assert r.json()["low_latency"] is False  # the node's default
        assert (await put(False, "a", {"latency": "low"})).status_code == 422
        r = await put(True, "a", {"latency": "standard"})
        assert (r.json()["latency"], r.json()["low_latency"]) == ("standard", False)
        assert db.get_stream("a").latency == "standard"
        r = await put(True, "a", {"latency": ""})
        assert (r.json()["latency"], r.json()["low_latency"]) == ("", True)
        assert (await put(True, "a", {"latency": "fast"})).status_code == 422
        # encrypted: whole segments, whatever the node does; "low" cannot be asked for
        r = await put(True, "b", {"access": "token", "encryption": "aes-128"})
        assert r.status_code == 200 and r.json()["low_latency"] is False
        r = await put(True, "b", {"latency": "low"})
        assert r.status_code == 422 and "AES-128" in r.text
        assert (await put(True, "b", {"latency": "low", "encryption": "none"})).json()["low_latency"] is True
        assert (await put(True, "b", {"encryption": "aes-128"})).status_code == 422
    finally:
        db.engine.dispose()
