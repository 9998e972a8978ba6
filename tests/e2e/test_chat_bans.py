"""Chat bans and timeouts by identity and by address, kept in PostgreSQL: they hold after the
node restarts and on a second node sharing the database (each node has its own in-process
bus here, so what node B knows it knows from the database); an unban lifts them there too;
a revoked chat token stops working everywhere and its connection is closed. Real servers,
real WebSockets, clients bound to other loopback addresses."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import TidecastServer, start_server
from tests.e2e.test_chat import Client

pytestmark = pytest.mark.e2e


class Chatter(Client):
    """test_chat's client, with the close code of a connection the server ends."""

    async def closed_with(self, timeout: float = 10) -> int:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.ws.recv()
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else 0


async def open_chat(server: TidecastServer, source: str, token: str | None = None) -> Chatter:
    url = f"ws://127.0.0.1:{server.http_port}/chat/room" + (f"?token={token}" if token else "")
    return Chatter(await websockets.connect(url, local_addr=(source, 0), open_timeout=5))


async def join(server: TidecastServer, source: str, name: str | None, token: str | None = None) -> tuple[Chatter, dict[str, Any]]:
    """Connect and join; (the chatter, the first welcome or error event)."""
    c = await open_chat(server, source, token)
    await c.send(type="join", **({"name": name} if name else {}))
    ev = await c.next()
    while ev["type"] not in ("welcome", "error"):
        ev = await c.next()
    return c, ev


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from tests.services import pg_database

    base = tmp_path_factory.mktemp("bans")
    with pg_database() as url:
        env = {"TIDECAST_DATABASE_URL": url, "TIDECAST_ADMIN_TOKEN": "adm_" + secrets.token_hex(16)}
        a = start_server(base / "a", env=env)
        b = start_server(base / "b", env=env)
        state = {"a": a, "b": b, "env": env, "base": base}
        try:
            r = httpx.post(f"{a.http}/api/v1/streams", json={"name": "room"}, headers=admin(a, env), timeout=10)
            r.raise_for_status()
            yield state
        finally:
            for s in (state["a"], b):
                s.stop()


def admin(server: TidecastServer, env: dict[str, str]) -> dict[str, str]:
    return {"authorization": f"Bearer {env['TIDECAST_ADMIN_TOKEN']}"}


def mod_token(server: TidecastServer, env: dict[str, str]) -> dict[str, Any]:
    r = httpx.post(f"{server.http}/api/v1/streams/room/chat-tokens", json={"name": "mod", "role": "moderator"},
                   headers=admin(server, env), timeout=10)  # fmt: skip
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_bans_by_identity_and_address_survive_a_restart_and_hold_on_another_node(cluster: dict[str, Any]) -> None:
    env: dict[str, str] = cluster["env"]
    a: TidecastServer = cluster["a"]
    b: TidecastServer = cluster["b"]
    tok = mod_token(a, env)

    async def before_restart() -> None:
        mod, ev = await join(a, "127.0.0.1", None, tok["token"])
        assert ev["type"] == "welcome" and ev["you"]["role"] == "moderator"
        bob, ev = await join(a, "127.0.0.7", "bob")
        tim, _ = await join(a, "127.0.0.9", "tim")
        assert ev["type"] == "welcome"
        await mod.send(type="ban", user="bob")
        assert (await bob.next("error"))["code"] == "banned"
        assert await bob.closed_with() == 4003
        await mod.send(type="timeout", user="tim", seconds=600)
        await tim.next("timeout")
        await tim.send(type="message", text="hello?")
        assert (await tim.next("error"))["code"] == "timed_out"
        # by identity from another address; by address under another name
        again, ev = await join(a, "127.0.0.8", "Bob")
        assert ev["code"] == "banned"
        await again.ws.close()
        other = await open_chat(a, "127.0.0.7")
        assert (await other.next("error"))["code"] == "banned" and await other.closed_with() == 4003
        same_net, ev = await join(a, "127.0.0.9", "tam")  # tim's address, another name: timed out too
        await same_net.send(type="message", text="hi")
        assert (await same_net.next("error"))["code"] == "timed_out"
        for c in (mod, tim, same_net):
            await c.ws.close()

    asyncio.run(before_restart())
    a.stop()
    a = cluster["a"] = start_server(cluster["base"] / "a", env=env)

    async def after_restart(server: TidecastServer) -> None:
        bob, ev = await join(server, "127.0.0.8", "bob")
        assert ev["code"] == "banned", ev
        await bob.ws.close()
        other = await open_chat(server, "127.0.0.7")
        assert (await other.next("error"))["code"] == "banned"
        tam, ev = await join(server, "127.0.0.9", "tam2")
        await tam.send(type="message", text="hi")
        assert (await tam.next("error"))["code"] == "timed_out"
        fine, ev = await join(server, "127.0.0.10", f"dave{server.http_port}")
        await fine.send(type="message", text="all good")
        assert (await fine.next("message"))["text"] == "all good"
        for c in (tam, fine):
            await c.ws.close()

    asyncio.run(after_restart(a))  # the same node, restarted
    asyncio.run(after_restart(b))  # another node on the same database

    async def unban_reaches_the_other_node() -> None:
        watcher, _ = await join(b, "127.0.0.11", "watcher")  # B re-reads bans while it has people
        mod, _ = await join(a, "127.0.0.1", None, tok["token"])
        await mod.send(type="unban", user="bob")
        await mod.next("unban")
        async with asyncio.timeout(15):
            while True:  # until B has read the unban (refused at connect or at join until then)
                try:
                    bob, ev = await join(b, "127.0.0.7", "bob")
                except websockets.ConnectionClosed:
                    ev = {"type": "closed"}
                if ev["type"] == "welcome":
                    break
                await asyncio.sleep(0.5)
        # a ban made on A reaches someone connected on B (through the database), address and all
        await mod.send(type="ban", user="bob")
        assert await bob.closed_with(timeout=15) == 4003
        late = await open_chat(b, "127.0.0.7")
        assert (await late.next("error"))["code"] == "banned"
        for c in (watcher, mod):
            await c.ws.close()

    asyncio.run(unban_reaches_the_other_node())


def test_a_revoked_chat_token_stops_working_everywhere(cluster: dict[str, Any]) -> None:
    env: dict[str, str] = cluster["env"]
    a: TidecastServer = cluster["a"]
    b: TidecastServer = cluster["b"]
    tok = mod_token(a, env)

    async def run() -> None:
        mod, ev = await join(a, "127.0.0.1", None, tok["token"])
        assert ev["type"] == "welcome"
        r = await asyncio.to_thread(httpx.delete, f"{a.http}/api/v1/streams/room/chat-tokens/{tok['id']}",
                                    headers=admin(a, env), timeout=10)  # fmt: skip
        assert r.status_code == 204
        assert (await mod.next("error"))["code"] == "revoked"
        assert await mod.closed_with() == 4001
        for server in (a, b):
            c = await open_chat(server, "127.0.0.1", tok["token"])
            ev = await c.next("error")
            assert ev["code"] == "bad_token" and "revoked" in ev["message"]
        no = await asyncio.to_thread(httpx.delete, f"{a.http}/api/v1/streams/room/chat-tokens/{tok['id']}",
                                     timeout=10)  # fmt: skip
        assert no.status_code == 401

    asyncio.run(run())


@pytest.mark.browser
def test_the_watch_page_takes_the_token_out_of_its_address(cluster: dict[str, Any]) -> None:
    """Chromium: the page joins with the token from its URL, then the URL no longer has it."""
    from tests.e2e.browser import chromium_page

    a: TidecastServer = cluster["a"]
    tok = mod_token(a, cluster["env"])
    with chromium_page() as page:
        page.goto(f"{a.http}/watch/room?chat_token={tok['token']}&x=1#top")  # type: ignore[attr-defined]
        page.wait_for_function("window.tidecastChat.me && window.tidecastChat.me.role === 'moderator'",  # type: ignore[attr-defined]
                               timeout=15_000)  # fmt: skip
        href = page.evaluate("location.href")  # type: ignore[attr-defined]
        assert "chat_token" not in href and href.endswith("/watch/room?x=1#top"), href
