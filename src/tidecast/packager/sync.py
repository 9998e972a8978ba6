"""PlaylistSync: the stored playlists follow the packager's, whatever the store does.

The packager says what each playlist should now be (``want``); one writer per
key puts the newest version, and a version that a newer one replaced before it
was written is simply skipped (a playlist is a state, not a log). So a slow
write delays only its own key, never the others, and a store that fails for a
while gets the newest playlists once it is back: failed writes are retried with
backoff for as long as this packager leads the stream. Every write carries the
writer's lease epoch; the store refuses it once a newer leader wrote (fencing),
and the stream is then dropped here at once.

A key can name keys that must have been written once before it (``after``): the
multivariant playlist waits for the media playlists it lists.

``on_written(stream, key, data)`` is called after each successful write (the
packager tells origins about it); it must not block and must not raise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tidecast.metrics import REGISTRY, Registry
from tidecast.retry import Backoff
from tidecast.supervise import Supervisor

log = logging.getLogger("tidecast.packager.sync")

PutFn = Callable[[str, bytes, int], Awaitable[None]]  # key, data, epoch
WrittenFn = Callable[[str, str, bytes], None]  # stream, key, data
DEPENDENCY_WAIT = 10.0  # seconds a key waits for the keys it comes after, then goes anyway


@dataclass(slots=True)
class _Slot:
    stream: str
    data: bytes
    epoch: int
    after: tuple[str, ...]
    version: int = 1
    written: int = 0
    task: asyncio.Task[None] | None = None


@dataclass(slots=True)
class SyncStats:
    writes: int = 0
    coalesced: int = 0  # versions never written because a newer one came first
    retries: int = 0
    refused: int = 0
    keys_written: set[str] = field(default_factory=set)


class PlaylistSync:
    def __init__(
        self, put: PutFn, *, refused: tuple[type[BaseException], ...],
        on_refused: Callable[[str, BaseException], None], supervisor: Supervisor,
        backoff: Backoff | None = None, registry: Registry = REGISTRY,
        on_written: WrittenFn | None = None,
    ) -> None:  # fmt: skip
        self.put = put
        self.on_written = on_written
        self.refused = refused
        self.on_refused = on_refused
        self.sup = supervisor
        self.backoff = backoff or Backoff(initial=0.2, maximum=5.0)
        self.stats = SyncStats()
        self._slots: dict[str, _Slot] = {}
        self._written_once: dict[str, asyncio.Event] = {}
        # one write of a key at a time, even across a forget (a forgotten slot's write may
        # still be on its way when the stream is led here again)
        self._key_locks: dict[str, asyncio.Lock] = {}
        self._retries = registry.counter(
            "tidecast_packager_playlist_write_retries_total",
            "Playlist writes that failed and were tried again later.", ("stream",),
        )  # fmt: skip
        self._refusals = registry.counter(
            "tidecast_packager_writes_refused_total",
            "Writes refused because a newer packager leads the stream (fencing).", ("stream",),
        )  # fmt: skip

    def want(self, stream: str, key: str, data: bytes, epoch: int, after: tuple[str, ...] = ()) -> None:
        """Make ``data`` the stored content of ``key`` (as soon as the store takes it)."""
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot(stream, data, epoch, after)
        else:
            if slot.written < slot.version:
                self.stats.coalesced += 1
            slot.data, slot.epoch, slot.after, slot.stream = data, epoch, after, stream
            slot.version += 1
        if slot.task is None or slot.task.done():
            slot.task = self.sup.run(f"playlist-write {key}", self._write(key, slot))

    def pending(self, stream: str | None = None) -> int:
        """Keys whose newest version is not stored yet."""
        return sum(1 for s in self._slots.values() if stream is None or s.stream == stream)

    def forget(self, stream: str) -> None:
        """This packager no longer leads ``stream``: drop what it still meant to write.
        A write already on its way is not cancelled (its thread could not be stopped
        anyway): the store takes it or refuses it, and the outcome is logged."""
        for key, slot in list(self._slots.items()):
            if slot.stream == stream:
                del self._slots[key]

    async def flush(self, timeout: float) -> bool:
        """Wait until every wanted version is stored (at most ``timeout``)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self._slots and loop.time() < end:  # noqa: ASYNC110 (bounded wait for the writers)
            await asyncio.sleep(0.02)
        return not self._slots

    def _event(self, key: str) -> asyncio.Event:
        ev = self._written_once.get(key)
        if ev is None:
            ev = self._written_once[key] = asyncio.Event()
        return ev

    async def _write(self, key: str, slot: _Slot) -> None:
        delays = self.backoff.delays()
        for dep in slot.after:
            try:
                await asyncio.wait_for(self._event(dep).wait(), DEPENDENCY_WAIT)
            except TimeoutError:
                log.warning("%s: %s was never written; writing %s anyway", slot.stream, dep, key)
        lock = self._key_locks.setdefault(key, asyncio.Lock())
        while self._slots.get(key) is slot and slot.written < slot.version:
            try:
                async with lock:
                    if self._slots.get(key) is not slot:
                        break
                    version, data, epoch = slot.version, slot.data, slot.epoch
                    await self.put(key, data, epoch)
            except self.refused as exc:
                self.stats.refused += 1
                self._refusals.inc(stream=slot.stream)
                log.warning("%s: %s (a newer packager leads the stream)", slot.stream, exc)
                if self._slots.get(key) is slot:
                    del self._slots[key]
                self.on_refused(slot.stream, exc)
                return
            except Exception as exc:  # noqa: BLE001 - the store's own retries are spent: try later
                self.stats.retries += 1
                self._retries.inc(stream=slot.stream)
                delay = next(delays)
                log.warning("%s: could not write %s (%r); trying again in %.1f s", slot.stream, key, exc, delay)
                await asyncio.sleep(delay)
                continue
            self.stats.writes += 1
            slot.written = version
            self._event(key).set()
            if self.on_written is not None:
                self.on_written(slot.stream, key, data)
        if self._slots.get(key) is slot and slot.written >= slot.version:
            del self._slots[key]
