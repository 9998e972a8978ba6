"""Chat in the browser: hostile names and messages render as text; a recorded
broadcast's chat replays in step with the VOD, also after seeks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import websockets

from tests.conftest import start_server, wait_for
from tests.e2e.test_abr import publish_file, render

pytestmark = [pytest.mark.e2e, pytest.mark.browser]
T = TypeVar("T")
XSS = "<img src=x onerror=alert(1)>"


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine in its own thread (Playwright's sync API owns this thread's loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def test_hostile_names_and_messages_are_text(tmp_path: Path) -> None:
    from tests.e2e.browser import chromium_page

    server = start_server(tmp_path / "data")
    server.create_stream("room")
    try:
        with chromium_page() as page:
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(f"{server.http}/watch/room")
            page.fill("#chat-name", "viewer1")
            page.click("#chat-join button")
            page.wait_for_function("window.tidecastChat.state === 'joined'", timeout=10_000)

            async def attacker() -> None:
                async with websockets.connect(f"ws://127.0.0.1:{server.http_port}/chat/room") as ws:
                    await ws.send(json.dumps({"type": "join", "name": XSS}))
                    await ws.send(json.dumps({"type": "message", "text": XSS + "<script>alert(2)</script>"}))
                    await asyncio.sleep(0.5)

            run_async(attacker())
            page.wait_for_selector("#chat-list li.msg", timeout=5_000)
            assert page.inner_text("#chat-list li.msg .user") == XSS
            assert page.inner_text("#chat-list li.msg .text") == XSS + "<script>alert(2)</script>"
            assert page.eval_on_selector_all("#chat-list img, #chat-list script", "els => els.length") == 0
            page.wait_for_timeout(500)
            assert dialogs == []
            # the page's own viewer can chat too
            page.fill("#chat-text", "hi from the page")
            page.press("#chat-text", "Enter")
            page.wait_for_function(
                "[...document.querySelectorAll('#chat-list li.msg .text')].some(e => e.textContent === 'hi from the page')"
            )
    finally:
        server.stop()


def test_vod_chat_replays_in_sync_and_follows_seeks(tmp_path: Path) -> None:
    from tests.e2e.browser import chromium_page

    source = render(tmp_path, 640, 360, 24)
    server = start_server(tmp_path / "data", "--reconnect-grace", "0")
    key = server.create_stream("room")
    tok = httpx.post(f"{server.http}/api/v1/streams/room/chat-tokens", json={"name": "host", "role": "streamer"},
                     headers={"authorization": f"Bearer {server.admin_token}"}).json()["token"]  # fmt: skip
    try:
        pub = publish_file(server, key, source)
        wait_for(lambda: httpx.get(f"{server.http}/api/v1/streams/room").json()["live"], 15, what="live")

        async def talk() -> list[float]:
            sent = []
            async with websockets.connect(f"ws://127.0.0.1:{server.http_port}/chat/room?token={tok}") as ws:
                await ws.send(json.dumps({"type": "join"}))
                for i in range(4):
                    await asyncio.sleep(4)
                    await ws.send(json.dumps({"type": "message", "text": f"at step {i}"}))
                    sent.append(time.time())
            return sent

        run_async(talk())
        assert pub.wait(timeout=60) == 0
        wait_for(lambda: httpx.get(f"{server.http}/api/v1/broadcasts").json()[0]["vod"], 30, what="VOD")
        b = httpx.get(f"{server.http}/api/v1/broadcasts").json()[0]
        stored = httpx.get(f"{server.http}/api/v1/broadcasts/{b['id']}/chat").json()
        assert [m["text"] for m in stored] == [f"at step {i}" for i in range(4)]
        assert all(m["offset"] is not None and 0 < m["offset"] < 24 for m in stored)
        with chromium_page() as page:
            page.goto(f"{server.http}{b['page_url']}")
            page.wait_for_function("window.tidecastPlayer.state === 'playing'", timeout=20_000)
            page.wait_for_function("window.tidecastChat.replay !== undefined")
            appeared: dict[str, float] = {}
            deadline = time.monotonic() + 30
            while len(appeared) < 4 and time.monotonic() < deadline:
                st = page.evaluate("({ids: window.tidecastChat.shownIds || [], at: window.tidecastChat.playingAt})")
                for mid in st["ids"]:
                    appeared.setdefault(mid, st["at"])
                page.wait_for_timeout(100)
            assert len(appeared) == 4, appeared
            for m in stored:  # shown when the picture reaches the moment it was sent
                lag = appeared[m["id"]] - m["ts"]
                assert 0 <= lag <= 1.0, f"{m['text']} shown {lag:+.2f} s from its time"
            # seek back to the start: the list starts over; then to the middle
            page.evaluate("document.getElementById('video').currentTime = 0.5")
            page.wait_for_timeout(1200)
            early = page.evaluate("window.tidecastChat.shownIds")
            page.evaluate("document.getElementById('video').currentTime = 11")
            page.wait_for_timeout(1200)
            # one snapshot: playback goes on, and the next message may be due any moment
            middle = page.evaluate("({ids: window.tidecastChat.shownIds, at: window.tidecastChat.playingAt,"
                                   " shown: document.querySelectorAll('#chat-list li.msg').length})")  # fmt: skip
            expected = [m["id"] for m in stored if m["ts"] <= middle["at"]]
            assert middle["ids"] == expected and 0 < len(expected) < 4
            assert len(early) < len(expected)
            assert middle["shown"] == len(expected)
    finally:
        server.stop()
