"""Blocking playlist reload and hinted parts at a real origin (``OriginNode``: the sendfile
fast path and the app), over a real local store and the in-process bus. Playlists are
written by hand in the packager's LL format, the way the packager writes them: one PUT,
then a ``PlaylistUpdated`` on ``playlist.<stream>``."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from tests.llhls import ll_playlist

from tidecast.bus.memory import MemoryBus
from tidecast.config import Settings
from tidecast.messages import ChatEvent, PlaylistUpdated
from tidecast.metrics import REGISTRY, Registry
from tidecast.origin.blocking import parse_part_key, read_playlist
from tidecast.origin.files import LIVE_PLAYLIST
from tidecast.origin.reload import PartOutcome, ReloadService
from tidecast.roles import OriginNode, Shared, open_database, open_media
from tidecast.store.base import VersionedStore

PLAYLIST = "hls/s/720p.m3u8"
HOLD = 6.0  # 3 x the target duration (2 s) of the playlists below


@dataclass
class Origin:
    node: OriginNode
    bus: MemoryBus
    store: VersionedStore

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.node.http_port}"

    async def write(self, text: str, key: str = PLAYLIST, notify: bool = True) -> float:
        """Store a playlist as the packager does (then tell the origins); the time it was stored."""
        await self.store.put(key, text.encode())
        stored = time.monotonic()
        if notify:
            msn, part, ended = read_playlist(text.encode()).position
            rendition = key.rsplit("/", 1)[1].removesuffix(".m3u8")
            await self.bus.publish("playlist.s", PlaylistUpdated("s", rendition, msn, part, ended, time.time()))
        return stored


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[Origin]:
    # crowds come from one loopback address: no per-address cap here
    settings = Settings(host="127.0.0.1", http_port=0, rtmp_port=0, data_dir=tmp_path / "data",
                        http_max_per_ip=8192)  # fmt: skip
    bus = MemoryBus()
    store = open_media(settings)
    node = OriginNode(settings, Shared(bus, open_database(settings), store))
    await node.start()
    await node.listen()
    try:
        yield Origin(node, bus, store)
    finally:
        await node.aclose()
        node.db.close()


async def timed_get(client: httpx.AsyncClient, url: str) -> tuple[httpx.Response, float]:
    r = await client.get(url)
    return r, time.monotonic()


def blocking_count(result: str) -> float:
    return REGISTRY.counter("tidecast_origin_blocking_requests_total", "", ("result",)).value(result=result)


# ---------------------------------------------------------------- playlists


async def test_a_blocking_request_is_answered_once_the_playlist_has_the_part(origin: Origin) -> None:
    await origin.write(ll_playlist(5, 2))  # segments 0..4, parts 0..1 of segment 5
    waited = blocking_count("waited")
    async with httpx.AsyncClient(base_url=origin.url, timeout=20) as c:
        started = time.monotonic()
        pending = asyncio.create_task(timed_get(c, "/hls/s/720p.m3u8?_HLS_msn=5&_HLS_part=2"))
        await asyncio.sleep(0.4)
        assert not pending.done()  # held: the playlist has no part 2 of segment 5 yet
        stored = await origin.write(ll_playlist(5, 3))
        r, answered = await pending
    assert r.status_code == 200 and 'URI="b1/720p/000005.2.m4s"' in r.text
    assert stored <= answered < started + HOLD
    assert r.headers["cache-control"] == "public, max-age=2"  # the edge may keep it under its query
    assert r.headers["access-control-allow-origin"] == "*" and r.headers["content-type"].endswith("mpegurl")
    assert blocking_count("waited") == waited + 1


async def test_a_lost_notification_costs_only_the_poll(origin: Origin) -> None:
    await origin.write(ll_playlist(5, 2))
    async with httpx.AsyncClient(base_url=origin.url, timeout=20) as c:
        started = time.monotonic()
        pending = asyncio.create_task(timed_get(c, "/hls/s/720p.m3u8?_HLS_msn=6"))
        await asyncio.sleep(0.3)
        stored = await origin.write(ll_playlist(7, 0), notify=False)  # the bus never says so
        r, answered = await pending
    assert r.status_code == 200 and "b1/720p/000006.m4s" in r.text
    assert stored <= answered < started + HOLD


async def test_what_the_playlist_has_is_answered_at_once(origin: Origin) -> None:
    await origin.write(ll_playlist(5, 2))
    async with httpx.AsyncClient(base_url=origin.url, timeout=20) as c:
        for query in ("_HLS_msn=4", "_HLS_msn=5&_HLS_part=1", "_HLS_msn=0&_HLS_part=0", "_HLS_msn=4&_HLS_part=9"):
            started = time.monotonic()
            r = await c.get(f"/hls/s/720p.m3u8?{query}")
            assert r.status_code == 200 and time.monotonic() - started < 1.0, query
        plain = await c.get("/hls/s/720p.m3u8")  # no directives: today's live playlist headers
        assert plain.headers["cache-control"] == LIVE_PLAYLIST and plain.text == ll_playlist(5, 2)
        await origin.write(ll_playlist(5, ended=True))
        started = time.monotonic()
        ended = await c.get("/hls/s/720p.m3u8?_HLS_msn=99&_HLS_part=3")  # ENDLIST: ignored
        assert ended.status_code == 200 and "#EXT-X-ENDLIST" in ended.text and time.monotonic() - started < 1.0
        assert ended.headers["cache-control"] == "public, max-age=30"


@pytest.mark.parametrize(("query", "detail"), [
    ("_HLS_msn=abc", "_HLS_msn must be a decimal integer"),
    ("_HLS_msn=-3", "_HLS_msn must be a decimal integer"),
    ("_HLS_msn=5&_HLS_part=1.5", "_HLS_part must be a decimal integer"),
    ("_HLS_part=1", "_HLS_part needs _HLS_msn"),
    ("_HLS_msn=5&_HLS_msn=6", "given more than once"),
    ("_HLS_skip=no", "_HLS_skip must be YES or v2"),
    ("_HLS_msn=7", "more than 2 segments past the last one listed (4)"),
    ("_HLS_msn=5&_HLS_part=11", "10 parts past the last one listed, over the limit of 9"),
])  # fmt: skip
async def test_bad_and_too_far_requests_get_400_at_once(origin: Origin, query: str, detail: str) -> None:
    await origin.write(ll_playlist(5, 2))
    async with httpx.AsyncClient(base_url=origin.url, timeout=20) as c:
        started = time.monotonic()
        r = await c.get(f"/hls/s/720p.m3u8?{query}")
    assert r.status_code == 400 and detail in r.json()["detail"] and time.monotonic() - started < 1.0
    assert r.headers["cache-control"] == "no-store" and r.headers["access-control-allow-origin"] == "*"


async def test_a_missing_playlist_is_404_and_a_bad_path_400(origin: Origin) -> None:
    async with httpx.AsyncClient(base_url=origin.url, timeout=20) as c:
        assert (await c.get("/hls/s/720p.m3u8?_HLS_msn=1")).status_code == 404
        assert (await c.get("/hls/s/..%2f720p.m3u8?_HLS_msn=1")).status_code == 400


async def test_the_hold_ends_with_503_and_retry_after(origin: Origin) -> None:
    await origin.write(ll_playlist(5, 2, target=1))  # target duration 1 s: a 3 s hold
    async with httpx.AsyncClient(base_url=origin.url, timeout=20) as c:
        started = time.monotonic()
        r = await c.get("/hls/s/720p.m3u8?_HLS_msn=6")
        took = time.monotonic() - started
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.headers["cache-control"] == "no-store"
    assert "segment 6 was not in the playlist within 3 s" in r.json()["detail"]
    assert 3.0 - 0.05 <= took < HOLD


async def test_waiting_requests_are_bounded(origin: Origin) -> None:
    origin.node.reload.max_waiting = 3
    await origin.write(ll_playlist(5, 2))
    async with httpx.AsyncClient(base_url=origin.url, timeout=20) as c:
        held = [asyncio.create_task(c.get(f"/hls/s/720p.m3u8?_HLS_msn=5&_HLS_part={p}")) for p in (2, 3, 4)]
        deadline = time.monotonic() + 5
        while origin.node.reload.waiting < 3 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        assert origin.node.reload.waiting == 3
        started = time.monotonic()
        over = await c.get("/hls/s/720p.m3u8?_HLS_msn=6")
        assert over.status_code == 503 and over.headers["retry-after"] == "1"
        assert "too many requests are waiting" in over.json()["detail"] and time.monotonic() - started < 1.0
        ok = await c.get("/hls/s/720p.m3u8?_HLS_msn=4")  # what needs no wait is still answered
        assert ok.status_code == 200
        await origin.write(ll_playlist(5, 5))
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200, 200]
    assert origin.node.reload.waiting == 0


async def test_a_crowd_waiting_on_one_playlist_costs_one_read_per_change(origin: Origin) -> None:
    await origin.write(ll_playlist(5, 2))
    reads = origin.node.reload.store_reads
    before = reads.value()
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=origin.url, timeout=20, limits=limits) as c:
        crowd = [asyncio.create_task(c.get("/hls/s/720p.m3u8?_HLS_msn=5&_HLS_part=2")) for _ in range(150)]
        await asyncio.sleep(1.0)
        await origin.write(ll_playlist(5, 3))
        got = await asyncio.gather(*crowd)
    assert {r.status_code for r in got} == {200}
    # the first read, one per poll interval (0.1 s) while they wait, one after the write
    assert reads.value() - before <= 1 + 1.0 / 0.1 + 3


async def test_delta_updates(origin: Origin) -> None:
    await origin.write(ll_playlist(20, 2))
    async with httpx.AsyncClient(base_url=origin.url, timeout=20) as c:
        delta = await c.get("/hls/s/720p.m3u8?_HLS_skip=YES")
        both = await c.get("/hls/s/720p.m3u8?_HLS_msn=19&_HLS_part=1&_HLS_skip=v2")
    assert delta.status_code == 200 and "#EXT-X-SKIP:SKIPPED-SEGMENTS=13\n" in delta.text
    assert delta.headers["cache-control"] == LIVE_PLAYLIST  # asks for nothing to wait for
    assert both.text == delta.text and both.headers["cache-control"] == "public, max-age=2"


async def test_a_held_request_does_not_take_its_connection_off_the_fast_path(origin: Origin) -> None:
    await origin.write(ll_playlist(5, 2))
    await origin.store.put("hls/s/b1/720p/000004.m4s", b"segment four")
    loop = asyncio.get_running_loop()
    with socket.create_connection(("127.0.0.1", origin.node.http_port), timeout=10) as s:
        s.sendall(b"GET /hls/s/720p.m3u8?_HLS_msn=5&_HLS_part=2 HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /hls/s/b1/720p/000004.m4s HTTP/1.1\r\nHost: x\r\n\r\n")  # fmt: skip
        await asyncio.sleep(0.3)
        await origin.write(ll_playlist(5, 3))
        f = s.makefile("rb")
        first = await loop.run_in_executor(None, read_response, f)
        second = await loop.run_in_executor(None, read_response, f)
    assert first[0] == 200 and b"000005.2.m4s" in first[2]
    assert second[0] == 200 and second[2] == b"segment four"
    assert second[1]["server"] == "tidecast"  # the fast path's own answer (uvicorn says "uvicorn")


def read_response(f: object) -> tuple[int, dict[str, str], bytes]:
    status = f.readline()  # type: ignore[attr-defined]
    headers: dict[str, str] = {}
    while (line := f.readline()) not in (b"\r\n", b""):  # type: ignore[attr-defined]
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(status.split()[1]), headers, f.read(int(headers.get("content-length", "0")))  # type: ignore[attr-defined]


# ---------------------------------------------------------------- parts


async def test_the_hinted_part_waits_until_it_is_stored(origin: Origin) -> None:
    await origin.write(ll_playlist(5, 2))  # hint: b1/720p/000005.2.m4s
    async with httpx.AsyncClient(base_url=origin.url, timeout=20) as c:
        started = time.monotonic()
        pending = asyncio.create_task(timed_get(c, "/hls/s/b1/720p/000005.2.m4s"))
        await asyncio.sleep(0.3)
        assert not pending.done()
        await origin.store.put("hls/s/b1/720p/000005.2.m4s", b"part 5.2")
        stored = time.monotonic()
        await origin.write(ll_playlist(5, 3))
        r, answered = await pending
        assert r.status_code == 200 and r.content == b"part 5.2"
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert stored <= answered < started + 1.0 + 0.5  # within the part wait of 3 part targets
        for gone in ("000009.0", "000004.3", "000005.5"):  # far away, listed complete, past the next
            started = time.monotonic()
            r = await c.get(f"/hls/s/b1/720p/{gone}.m4s")
            assert r.status_code == 404 and time.monotonic() - started < 0.5, gone


async def test_the_hinted_part_that_does_not_come_is_503(origin: Origin) -> None:
    await origin.write(ll_playlist(5, 2))
    async with httpx.AsyncClient(base_url=origin.url, timeout=20) as c:
        started = time.monotonic()
        r = await c.get("/hls/s/b1/720p/000005.3.m4s")  # the one after the hint
        took = time.monotonic() - started
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.headers["cache-control"] == "no-store"
    assert 1.0 - 0.05 <= took < 2.0


async def test_the_app_answers_like_the_fast_path(origin: Origin) -> None:
    """The same waits through the FastAPI route (a remote store's objects, connections
    handed over to uvicorn)."""
    await origin.write(ll_playlist(5, 2))
    transport = httpx.ASGITransport(app=origin.node.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://origin", timeout=20) as c:
        playlist = asyncio.create_task(c.get("/hls/s/720p.m3u8?_HLS_msn=5&_HLS_part=2"))
        part = asyncio.create_task(c.get("/hls/s/b1/720p/000005.2.m4s"))
        await asyncio.sleep(0.3)
        assert not playlist.done() and not part.done()
        await origin.store.put("hls/s/b1/720p/000005.2.m4s", b"part 5.2")
        await origin.write(ll_playlist(5, 3))
        r = await playlist
        assert r.status_code == 200 and "000005.2.m4s" in r.text
        assert r.headers["cache-control"] == "public, max-age=2"
        p = await part
        assert p.status_code == 200 and p.content == b"part 5.2"
        assert (await c.get("/hls/s/720p.m3u8?_HLS_part=1")).status_code == 400
        assert (await c.get("/hls/s/b1/720p/000009.0.m4s")).status_code == 404
        late = await c.get("/hls/s/b1/720p/000005.4.m4s")  # the one after the (new) hint: never comes
        assert late.status_code == 503 and late.headers["retry-after"] == "1"


# ---------------------------------------------------------------- the service and its bus


async def test_bad_bus_messages_do_not_stop_the_notifications(tmp_path: Path) -> None:
    """With a poll far longer than the hold, only a notification can answer in time:
    garbage, other kinds and other streams' notices on the subject come first."""
    from tidecast.store.local import LocalStore

    store, bus = LocalStore(tmp_path), MemoryBus()
    svc = ReloadService(store, bus, max_hold=HOLD, poll=60.0, registry=Registry())
    svc.start()
    try:
        await store.put(PLAYLIST, ll_playlist(5, 2).encode())
        started = time.monotonic()
        pending = asyncio.create_task(svc.playlist(PLAYLIST, "_HLS_msn=5&_HLS_part=2"))
        await asyncio.sleep(0.2)
        await bus.publish_raw("playlist.s", b"\xff not a message")
        await bus.publish_raw("playlist.s", b'{"kind":"playlist.updated","body":{"stream":"s"}}')
        await bus.publish("playlist.s", ChatEvent("s", "n", {"type": "x"}))
        await bus.publish("playlist.s", PlaylistUpdated("other", "720p", 9, 0, False, time.time()))
        await bus.publish("playlist.s", PlaylistUpdated("s", "720p/../..", 9, 0, False, time.time()))
        await asyncio.sleep(0.2)
        assert not pending.done()
        await store.put(PLAYLIST, ll_playlist(5, 3).encode())
        await bus.publish("playlist.s", PlaylistUpdated("s", "720p", 4, 2, False, time.time()))
        reply = await pending
        assert reply is not None and reply.status == 200 and b"000005.2.m4s" in reply.body
        assert time.monotonic() - started < HOLD
        assert svc.sup.running("reload-notifications")
    finally:
        await svc.aclose()


async def test_the_part_wait_through_the_service(tmp_path: Path) -> None:
    from tidecast.store.local import LocalStore

    store = LocalStore(tmp_path)
    svc = ReloadService(store, None, max_hold=HOLD, registry=Registry())
    key = "hls/s/b1/720p/000005.2.m4s"
    ref = parse_part_key(key)
    assert ref is not None
    assert await svc.part(key, ref) is PartOutcome.GONE  # no playlist at all
    await store.put(PLAYLIST, ll_playlist(5, 2).encode())
    await store.put(key, b"p")
    assert await svc.part(key, ref) is PartOutcome.READY  # stored meanwhile: at once
    await store.delete(key)
    await store.put(PLAYLIST, ll_playlist(5, 0).encode())  # the playlist moved back: not hinted
    assert await svc.part(key, ref) is PartOutcome.GONE
    await svc.aclose()
