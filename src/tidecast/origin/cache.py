"""The origin's in-memory cache of hot objects, in front of a remote store (S3).

Live viewers all ask for the same few objects: the newest segments of each
rendition and the playlists. Segments and init segments never change once
written, so they are kept (least recently used first out) up to a byte
budget; playlists change every segment, so they are kept only for a short
time to live — a fraction of a segment. Concurrent misses for one key share
one fetch, so a burst of viewers costs the store one GET.

Each miss's fetch runs in a task of the cache's own (tracked; ``aclose``
cancels and awaits them), and requesters wait on it shielded: a requester that
goes away (a player disconnects, its task is cancelled) cancels neither the
fetch nor the other requesters waiting for it. A fetch has a deadline
(``fetch_timeout``). "Not found" answers are remembered for ``negative_ttl``
seconds (default: the playlist TTL) in a bounded negative cache, so a burst of
requests for an object not written yet costs one GET; any other error is not
kept: every requester of that fetch gets it, and the next request tries again.

Counted (per cache in ``stats`` / ``snapshot()``, and for the process as
``tidecast_origin_cache_requests_total{result}`` with result hit, miss,
collapsed, negative_hit, and ``tidecast_origin_cache_evictions_total``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from tidecast.metrics import REGISTRY, Registry
from tidecast.store.base import ObjectNotFound, Store

MUTABLE_SUFFIXES = (".m3u8", ".mpd")

log = logging.getLogger("tidecast.origin.cache")


class CacheClosed(RuntimeError):
    """The cache was closed (the origin is shutting down)."""


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
    negative_hits: int = 0  # answered "not found" from the negative cache
    negative_evictions: int = 0  # not-found answers pushed out of the negative cache by its bound
    errors: int = 0  # fetches that failed with an error other than not found


class HotCache:
    def __init__(
        self, store: Store, max_bytes: int, playlist_ttl: float = 0.25, *,
        negative_ttl: float | None = None, max_negative: int = 10_000, fetch_timeout: float = 30.0,
        registry: Registry = REGISTRY,
    ) -> None:  # fmt: skip
        self.store = store
        self.max_bytes = max_bytes
        self.playlist_ttl = playlist_ttl
        self.negative_ttl = playlist_ttl if negative_ttl is None else negative_ttl
        self.max_negative = max_negative
        self.fetch_timeout = fetch_timeout
        self.stats = CacheStats()
        self._items: OrderedDict[str, CachedObject] = OrderedDict()
        self._bytes = 0
        self._negative: OrderedDict[str, float] = OrderedDict()  # key -> monotonic time of the answer
        self._inflight: dict[str, asyncio.Task[CachedObject]] = {}
        self._closed = False
        self._requests = registry.counter(
            "tidecast_origin_cache_requests_total",
            "Hot-cache lookups by result (hit, miss, collapsed, negative_hit).", ("result",),
        )  # fmt: skip
        self._evictions = registry.counter(
            "tidecast_origin_cache_evictions_total", "Objects pushed out of the hot cache by its budget."
        )

    def _fresh(self, key: str, obj: CachedObject) -> bool:
        if key.endswith(MUTABLE_SUFFIXES):
            return time.monotonic() - obj.fetched < self.playlist_ttl
        return True

    async def get(self, key: str) -> CachedObject:
        """The object under ``key``; raises the store's ObjectNotFound (or its other errors)."""
        obj = self._items.get(key)
        if obj is not None and self._fresh(key, obj):
            self._items.move_to_end(key)
            self.stats.hits += 1
            self._requests.inc(result="hit")
            return obj
        missed_at = self._negative.get(key)
        if missed_at is not None:
            if time.monotonic() - missed_at < self.negative_ttl:
                self.stats.negative_hits += 1
                self._requests.inc(result="negative_hit")
                raise ObjectNotFound(key)
            del self._negative[key]
        task = self._inflight.get(key)
        if task is not None:
            self.stats.collapsed += 1
            self._requests.inc(result="collapsed")
        else:
            if self._closed:
                raise CacheClosed("the hot-object cache is closed")
            self.stats.misses += 1
            self._requests.inc(result="miss")
            task = asyncio.get_running_loop().create_task(self._fetch(key), name=f"cache-fetch {key}")
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._fetched, key))
        return await asyncio.shield(task)

    async def _fetch(self, key: str) -> CachedObject:
        try:
            async with asyncio.timeout(self.fetch_timeout):
                body = await self.store.get(key)
        except ObjectNotFound:
            self._remember_missing(key)
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.errors += 1
            log.warning("store GET %s failed: %r", key, exc)
            raise
        digest = hashlib.blake2b(body, digest_size=12).hexdigest()
        obj = CachedObject(body, f'"{digest}"', time.time(), time.monotonic())
        self._keep(key, obj)
        return obj

    def _fetched(self, key: str, task: asyncio.Task[CachedObject]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here: requesters (if any are left) re-raise it themselves

    def _remember_missing(self, key: str) -> None:
        if self.negative_ttl <= 0 or self.max_negative <= 0:
            return
        self._negative[key] = time.monotonic()
        self._negative.move_to_end(key)
        while len(self._negative) > self.max_negative:
            self._negative.popitem(last=False)
            self.stats.negative_evictions += 1

    def forget_missing(self, key: str) -> None:
        """``key`` is stored now (a part someone waited for): stop answering "not found"."""
        self._negative.pop(key, None)

    def _keep(self, key: str, obj: CachedObject) -> None:
        self._negative.pop(key, None)
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
            self._evictions.inc()

    async def aclose(self) -> None:
        """Cancel the fetches in flight and wait for them; later misses raise CacheClosed."""
        self._closed = True
        tasks = list(self._inflight.values())
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def snapshot(self) -> dict[str, int]:
        return {"objects": len(self._items), "bytes": self._bytes, "hits": self.stats.hits,
                "misses": self.stats.misses, "collapsed": self.stats.collapsed,
                "evictions": self.stats.evictions, "negative": len(self._negative),
                "negative_hits": self.stats.negative_hits, "errors": self.stats.errors,
                "inflight": len(self._inflight)}  # fmt: skip
