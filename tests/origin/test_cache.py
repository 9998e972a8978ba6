"""The origin's hot-object cache: one store GET per burst, playlists stay fresh, immutable
objects stay until the byte budget pushes them out, a requester that goes away hurts
nobody else, not-found answers are kept briefly, other errors are not kept. Real stores:
a local directory, and S3 (moto's server, its own process) behind the test's fault proxy."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ConnectionClosedError, EndpointConnectionError
from tests.faultproxy import FaultProxy
from tests.services import s3_server

from tidecast.metrics import Registry
from tidecast.origin.cache import CacheClosed, HotCache
from tidecast.store.base import ObjectNotFound
from tidecast.store.local import LocalStore
from tidecast.store.s3 import S3Store


class CountingStore(LocalStore):
    """A real local store that counts reads and makes them slow enough to overlap."""

    def __init__(self, root: Path, delay: float = 0.05) -> None:
        super().__init__(root)
        self.gets: list[str] = []
        self.delay = delay

    async def get(self, key: str) -> bytes:
        self.gets.append(key)
        await asyncio.sleep(self.delay)
        return await super().get(key)


def cache_of(store: object, max_bytes: int = 1 << 20, **kw: float) -> HotCache:
    return HotCache(store, max_bytes, registry=Registry(), **kw)  # type: ignore[arg-type]


async def test_concurrent_misses_share_one_fetch(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    await store.put("hls/s/b/720p/000001.m4s", b"x" * 1000)
    cache = cache_of(store)
    got = await asyncio.gather(*(cache.get("hls/s/b/720p/000001.m4s") for _ in range(50)))
    assert {g.body for g in got} == {b"x" * 1000} and len({g.etag for g in got}) == 1
    assert store.gets == ["hls/s/b/720p/000001.m4s"]
    assert cache.stats.collapsed == 49
    await cache.get("hls/s/b/720p/000001.m4s")
    assert len(store.gets) == 1 and cache.stats.hits == 1


async def test_playlists_expire_segments_do_not(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    await store.put("hls/s/720p.m3u8", b"#EXTM3U\n1")
    await store.put("hls/s/b/720p/000001.m4s", b"seg")
    cache = cache_of(store, playlist_ttl=0.1)
    assert (await cache.get("hls/s/720p.m3u8")).body.endswith(b"1")
    await store.put("hls/s/720p.m3u8", b"#EXTM3U\n2")
    assert (await cache.get("hls/s/720p.m3u8")).body.endswith(b"1")  # within the TTL
    await asyncio.sleep(0.15)
    assert (await cache.get("hls/s/720p.m3u8")).body.endswith(b"2")
    await cache.get("hls/s/b/720p/000001.m4s")
    await asyncio.sleep(0.15)
    await cache.get("hls/s/b/720p/000001.m4s")
    assert store.gets.count("hls/s/b/720p/000001.m4s") == 1


async def test_budget_evicts_least_recently_used(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    for i in range(5):
        await store.put(f"hls/s/b/r/{i:06d}.m4s", bytes(300))
    cache = cache_of(store, 1200)
    for i in range(5):
        await cache.get(f"hls/s/b/r/{i:06d}.m4s")
    assert cache.snapshot()["bytes"] <= 1200 and cache.stats.evictions == 1
    await cache.get("hls/s/b/r/000000.m4s")  # was evicted: fetched again
    assert store.gets.count("hls/s/b/r/000000.m4s") == 2


async def test_a_cancelled_first_requester_cancels_nobody_else(tmp_path: Path) -> None:
    store = CountingStore(tmp_path, delay=0.3)
    await store.put("hls/s/b/720p/000007.m4s", b"seg7")
    cache = cache_of(store)
    first = asyncio.create_task(cache.get("hls/s/b/720p/000007.m4s"))
    await asyncio.sleep(0.05)  # its fetch is in flight
    others = [asyncio.create_task(cache.get("hls/s/b/720p/000007.m4s")) for _ in range(5)]
    await asyncio.sleep(0.05)
    first.cancel()  # the player that asked first hangs up
    got = await asyncio.gather(*others)
    assert first.cancelled()
    assert [g.body for g in got] == [b"seg7"] * 5
    assert store.gets == ["hls/s/b/720p/000007.m4s"]


async def test_a_fetch_whose_requesters_all_left_still_fills_the_cache(tmp_path: Path) -> None:
    store = CountingStore(tmp_path, delay=0.2)
    await store.put("hls/s/b/720p/000008.m4s", b"seg8")
    cache = cache_of(store)
    waiters = [asyncio.create_task(cache.get("hls/s/b/720p/000008.m4s")) for _ in range(3)]
    await asyncio.sleep(0.05)
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert cache.snapshot()["inflight"] == 1
    await asyncio.sleep(0.3)
    assert cache.snapshot()["inflight"] == 0
    assert (await cache.get("hls/s/b/720p/000008.m4s")).body == b"seg8"
    assert len(store.gets) == 1 and cache.stats.hits == 1


async def test_not_found_is_kept_for_its_ttl_in_a_bounded_negative_cache(tmp_path: Path) -> None:
    store = CountingStore(tmp_path, delay=0.02)
    cache = cache_of(store, playlist_ttl=0.2)  # negative TTL defaults to the playlist TTL
    key = "hls/s/b/720p/000009.m4s"
    results = await asyncio.gather(*(cache.get(key) for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, ObjectNotFound) for r in results)
    for _ in range(10):
        with pytest.raises(ObjectNotFound):
            await cache.get(key)
    assert store.gets == [key], "a burst for a missing object costs one GET"
    assert cache.stats.negative_hits == 10 and cache.stats.collapsed == 19
    await store.put(key, b"late")
    with pytest.raises(ObjectNotFound):
        await cache.get(key)  # still within the TTL
    await asyncio.sleep(0.25)
    assert (await cache.get(key)).body == b"late"
    assert cache.snapshot()["negative"] == 0 and cache.snapshot()["negative_hits"] == 11

    small = cache_of(store, negative_ttl=10.0, max_negative=3)
    for i in range(5):
        with pytest.raises(ObjectNotFound):
            await small.get(f"hls/s/none/{i:06d}.m4s")
    assert small.snapshot()["negative"] == 3 and small.stats.negative_evictions == 2
    with pytest.raises(ObjectNotFound):
        await small.get("hls/s/none/000000.m4s")  # pushed out: asked again
    assert store.gets.count("hls/s/none/000000.m4s") == 2
    assert store.gets.count("hls/s/none/000004.m4s") == 1


async def test_cache_requests_are_exported_as_metrics(tmp_path: Path) -> None:
    store = CountingStore(tmp_path, delay=0)
    await store.put("hls/s/a.m4s", b"a")
    reg = Registry()
    cache = HotCache(store, 1 << 20, registry=reg)
    await cache.get("hls/s/a.m4s")
    await cache.get("hls/s/a.m4s")
    for _ in range(2):
        with pytest.raises(ObjectNotFound):
            await cache.get("hls/s/b.m4s")
    requests = reg.counter("tidecast_origin_cache_requests_total", "", ("result",))
    assert [requests.value(result=r) for r in ("hit", "miss", "negative_hit")] == [1, 2, 1]


# -- S3 behind the fault proxy --------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture
async def s3_proxied(s3_endpoint: str) -> AsyncIterator[tuple[FaultProxy, S3Store]]:
    with FaultProxy(s3_endpoint) as proxy:
        s3 = S3Store("tidecast-" + secrets.token_hex(4), endpoint_url=proxy.url, access_key="test",
                     secret_key="test", read_timeout=3.0)  # fmt: skip
        await s3.ensure_bucket()
        yield proxy, s3


async def test_s3_slow_get_a_cancelled_requester_leaves_the_others_their_answer(
    s3_proxied: tuple[FaultProxy, S3Store],
) -> None:
    proxy, s3 = s3_proxied
    await s3.put("hls/s/b/720p/000001.m4s", b"segment-one")
    cache = cache_of(s3)
    before = proxy.stats().requests["GET"]
    proxy.delay("GET", every=1, seconds=0.5)  # the store is slow
    first = asyncio.create_task(cache.get("hls/s/b/720p/000001.m4s"))
    await asyncio.sleep(0.1)
    others = [asyncio.create_task(cache.get("hls/s/b/720p/000001.m4s")) for _ in range(10)]
    await asyncio.sleep(0.1)
    first.cancel()
    got = await asyncio.gather(*others)
    assert {g.body for g in got} == {b"segment-one"}
    assert proxy.stats().requests["GET"] - before == 1
    proxy.pass_through()
    await cache.aclose()


async def test_s3_errors_reach_every_waiter_once_and_are_not_kept(
    s3_proxied: tuple[FaultProxy, S3Store],
) -> None:
    proxy, s3 = s3_proxied
    await s3.put("hls/s/720p.m3u8", b"#EXTM3U\n")
    cache = cache_of(s3)
    proxy.refuse()  # the store fails
    results = await asyncio.gather(*(cache.get("hls/s/720p.m3u8") for _ in range(10)), return_exceptions=True)
    assert all(isinstance(r, EndpointConnectionError | ConnectionClosedError) for r in results), results
    assert cache.stats.misses == 1 and cache.stats.errors == 1 and proxy.stats().refused == 1
    proxy.pass_through()
    assert (await cache.get("hls/s/720p.m3u8")).body == b"#EXTM3U\n"  # the error was not kept
    assert cache.stats.misses == 2


async def test_s3_fetch_deadline_and_aclose(s3_proxied: tuple[FaultProxy, S3Store]) -> None:
    proxy, s3 = s3_proxied
    await s3.put("hls/s/b/720p/000002.m4s", b"two")
    cache = cache_of(s3, fetch_timeout=0.3)
    proxy.hold("GET", "000002")
    with pytest.raises(TimeoutError):
        await cache.get("hls/s/b/720p/000002.m4s")
    assert cache.stats.errors == 1
    patient = cache_of(s3)
    waiters = [asyncio.create_task(patient.get("hls/s/b/720p/000002.m4s")) for _ in range(3)]
    assert await proxy.held(5)
    await patient.aclose()  # the origin shuts down: the fetch in flight is cancelled and awaited
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results
    assert patient.snapshot()["inflight"] == 0
    with pytest.raises(CacheClosed):
        await patient.get("hls/s/b/720p/000002.m4s")
    proxy.release()
