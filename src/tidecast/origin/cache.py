"""The origin's in-memory cache of hot objects, in front of a remote store (S3).

Live viewers all ask for the same few objects: the newest segments of each
rendition and the playlists. Segments and init segments never change once
written, so they are kept (least recently used first out) up to a byte
budget; playlists change every segment, so they are kept only for a short
time to live — a fraction of a segment. Concurrent misses for one key share
one fetch, so a burst of viewers costs the store one GET.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass

from tidecast.store.base import Store

MUTABLE_SUFFIXES = (".m3u8", ".mpd")


@dataclass(frozen=True, slots=True)
class CachedObject:
    body: bytes
    etag: str
    mtime: float  # when this copy was fetched (the store's write time is not portable)
    fetched: float  # monotonic


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    collapsed: int = 0  # misses that waited for another request's fetch
    evictions: int = 0


class HotCache:
    def __init__(self, store: Store, max_bytes: int, playlist_ttl: float = 0.25) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.playlist_ttl = playlist_ttl
        self.stats = CacheStats()
        self._items: OrderedDict[str, CachedObject] = OrderedDict()
        self._bytes = 0
        self._inflight: dict[str, asyncio.Future[CachedObject]] = {}

    def _fresh(self, key: str, obj: CachedObject) -> bool:
        if key.endswith(MUTABLE_SUFFIXES):
            return time.monotonic() - obj.fetched < self.playlist_ttl
        return True

    async def get(self, key: str) -> CachedObject:
        """The object under ``key``; raises the store's ObjectNotFound."""
        obj = self._items.get(key)
        if obj is not None and self._fresh(key, obj):
            self._items.move_to_end(key)
            self.stats.hits += 1
            return obj
        pending = self._inflight.get(key)
        if pending is not None:
            self.stats.collapsed += 1
            return await asyncio.shield(pending)
        self.stats.misses += 1
        fut: asyncio.Future[CachedObject] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            body = await self.store.get(key)
            digest = hashlib.blake2b(body, digest_size=12).hexdigest()
            obj = CachedObject(body, f'"{digest}"', time.time(), time.monotonic())
            self._keep(key, obj)
            fut.set_result(obj)
            return obj
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved here: waiters (if any) re-raise it themselves
            raise
        finally:
            del self._inflight[key]

    def _keep(self, key: str, obj: CachedObject) -> None:
        size = len(obj.body)
        if size > self.max_bytes // 4:
            return  # one huge object (a download) must not flush the live set
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= len(old.body)
        self._items[key] = obj
        self._bytes += size
        while self._bytes > self.max_bytes and self._items:
            _, gone = self._items.popitem(last=False)
            self._bytes -= len(gone.body)
            self.stats.evictions += 1

    def snapshot(self) -> dict[str, int]:
        return {"objects": len(self._items), "bytes": self._bytes, "hits": self.stats.hits,
                "misses": self.stats.misses, "collapsed": self.stats.collapsed,
                "evictions": self.stats.evictions}  # fmt: skip
