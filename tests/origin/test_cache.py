"""The origin's hot-object cache: one store GET per burst, playlists stay fresh,
immutable objects stay until the byte budget pushes them out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tidecast.origin.cache import HotCache
from tidecast.store.base import ObjectNotFound
from tidecast.store.local import LocalStore


class CountingStore(LocalStore):
    """A real local store that counts reads and makes them slow enough to overlap."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gets: list[str] = []

    async def get(self, key: str) -> bytes:
        self.gets.append(key)
        await asyncio.sleep(0.05)
        return await super().get(key)


async def test_concurrent_misses_share_one_fetch(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    await store.put("hls/s/b/720p/000001.m4s", b"x" * 1000)
    cache = HotCache(store, 1 << 20)
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
    cache = HotCache(store, 1 << 20, playlist_ttl=0.1)
    assert (await cache.get("hls/s/720p.m3u8")).body.endswith(b"1")
    await store.put("hls/s/720p.m3u8", b"#EXTM3U\n2")
    assert (await cache.get("hls/s/720p.m3u8")).body.endswith(b"1")  # within the TTL
    await asyncio.sleep(0.15)
    assert (await cache.get("hls/s/720p.m3u8")).body.endswith(b"2")
    await cache.get("hls/s/b/720p/000001.m4s")
    await asyncio.sleep(0.15)
    await cache.get("hls/s/b/720p/000001.m4s")
    assert store.gets.count("hls/s/b/720p/000001.m4s") == 1


async def test_budget_evicts_least_recently_used_and_misses_are_not_kept(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    for i in range(5):
        await store.put(f"hls/s/b/r/{i:06d}.m4s", bytes(300))
    cache = HotCache(store, 1200)
    for i in range(5):
        await cache.get(f"hls/s/b/r/{i:06d}.m4s")
    assert cache.snapshot()["bytes"] <= 1200 and cache.stats.evictions == 1
    await cache.get("hls/s/b/r/000000.m4s")  # was evicted: fetched again
    assert store.gets.count("hls/s/b/r/000000.m4s") == 2
    with pytest.raises(ObjectNotFound):
        await cache.get("hls/s/b/r/000009.m4s")
    await store.put("hls/s/b/r/000009.m4s", b"late")
    assert (await cache.get("hls/s/b/r/000009.m4s")).body == b"late"  # a miss is not remembered
