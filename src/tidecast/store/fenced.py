"""FencedWriter: writes stamped with an epoch, refused once a newer epoch's write is stored.

A packager holds its stream's lease with an epoch that grows on every takeover,
and stamps what it writes (each playlist) with it. ``FencedWriter.put`` writes
with ``put_if`` (compare-and-swap on the store's version) so a stale leader
cannot overwrite what a newer one wrote, even when its write was in flight
during the takeover:

1. It remembers the version of its own last write of each key (a bounded LRU),
   and writes with that version as the precondition: the normal case is one
   PUT, no GET. A key it has not written yet is tried as create-only.
2. When the precondition fails, someone else wrote (or deleted) the key: it
   re-reads the stored object and its version, reads the stored epoch with
   ``epoch_of``; newer than ours: ``StaleEpoch`` is raised and nothing is
   written; the same epoch or older: it writes again with the version just
   read. Bounded: after ``attempts`` lost races ``FenceContended`` is raised.

Writes of one key through one writer must not overlap (the packager writes a
stream's playlists from one task); the writer keeps no lock of its own.
Counted: ``tidecast_store_fenced_refused_total`` (StaleEpoch raised) and
``tidecast_store_fenced_conflicts_total`` (failed preconditions re-checked).

Usage::

    fence = FencedWriter(store)
    await fence.put("hls/main/720p.m3u8", playlist, epoch=lease.epoch, epoch_of=playlist_epoch)
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

from tidecast.metrics import REGISTRY, Registry
from tidecast.store.base import ObjectNotFound, VersionedStore

log = logging.getLogger("tidecast.store.fenced")


class StaleEpoch(Exception):
    """A write refused: the stored object carries a newer epoch than the writer's."""

    def __init__(self, key: str, stored_epoch: int, epoch: int) -> None:
        super().__init__(f"write of {key} with epoch {epoch} refused: the store has epoch {stored_epoch}")
        self.key = key
        self.stored_epoch = stored_epoch
        self.epoch = epoch


class FenceContended(Exception):
    """Too many lost compare-and-swap races on one key in a row (writers of one epoch fighting)."""


class FencedWriter:
    def __init__(
        self, store: VersionedStore, *, remember: int = 4096, attempts: int = 8,
        registry: Registry = REGISTRY,
    ) -> None:  # fmt: skip
        if remember < 1 or attempts < 1:
            raise ValueError("FencedWriter needs remember >= 1 and attempts >= 1")
        self.store = store
        self.remember = remember
        self.attempts = attempts
        self._versions: OrderedDict[str, str] = OrderedDict()
        self.refused = registry.counter(
            "tidecast_store_fenced_refused_total", "Fenced writes refused: a newer epoch is stored."
        )
        self.conflicts = registry.counter(
            "tidecast_store_fenced_conflicts_total",
            "Fenced writes whose precondition failed (another writer wrote): re-read and re-checked.",
        )  # fmt: skip

    def _remember(self, key: str, version: str) -> None:
        self._versions[key] = version
        self._versions.move_to_end(key)
        while len(self._versions) > self.remember:
            self._versions.popitem(last=False)

    def forget(self, key: str) -> None:
        """Drop the remembered version of ``key`` (the next write of it re-checks first)."""
        self._versions.pop(key, None)

    async def put(
        self, key: str, data: bytes, epoch: int, epoch_of: Callable[[bytes], int]
    ) -> None:
        """Write ``data`` unless the stored object's epoch is newer than ``epoch``.

        ``epoch_of`` reads the epoch a stored object carries (return 0 for an object
        written without one); what it raises is raised here, with nothing written.
        Raises StaleEpoch, FenceContended, or the store's errors.
        """
        expected = self._versions.get(key)
        for _ in range(self.attempts):
            new = await self.store.put_if(key, data, expected)
            if new is not None:
                self._remember(key, new)
                return
            self.conflicts.inc()
            self.forget(key)
            try:
                stored, expected_now = await self.store.get_versioned(key)
            except ObjectNotFound:
                expected = None  # deleted meanwhile: create it
                continue
            stored_epoch = epoch_of(stored)
            if stored_epoch > epoch:
                self.refused.inc()
                log.warning("refused a write of %s with epoch %d: the store has epoch %d",
                            key, epoch, stored_epoch)  # fmt: skip
                raise StaleEpoch(key, stored_epoch, epoch)
            expected = expected_now
        raise FenceContended(f"write of {key} lost {self.attempts} compare-and-swap races in a row")
