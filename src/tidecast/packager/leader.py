"""Packager leadership: exactly one packager writes a stream's playlists at a time.

Each stream has a lease of its own in the database (``db.leases``: judged on the
database's clock, with a fencing epoch), taken by the first packager that sees
one of the stream's messages; there is no lock shared between streams. The
holder renews its leases in the background every third of their time to live
(a task kept running by a ``Supervisor``), and counts one as its own only while
it is valid locally: until ``ttl * VALID_FRACTION`` after it *sent* the
request that took or renewed it, on its own monotonic clock, so never longer
than the database grants it. A renewal that fails keeps the lease only while
it is still valid that way; one the database refuses drops it at once.

A stand-by that asked for a lease held elsewhere learns when that lease
expires (seconds from then, on the database clock) and asks again only after
that (``may_try``), so it does not touch the database for each message of a
stream it does not lead, and asking about a held lease is a read, not a write.

Writes carry ``fence(stream)``; a write the database refused as stale
(``StaleEpoch``) means another packager took over: ``lost(stream)`` drops the
stream at once and tells ``on_lost``. Database calls go through
``tidecast.db.transient.call``: transient errors are retried within short
deadlines (a renewal never past the lease's local validity).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable

from tidecast.db import transient
from tidecast.db.leases import Fence, Grant, Leases
from tidecast.supervise import Supervisor

log = logging.getLogger("tidecast.packager.leader")

VALID_FRACTION = 0.9  # of the ttl, from the request's start: a margin for clock rates
RETRY_AFTER_FAILURE = 1.0  # s (at most ttl / 3) before asking again after a database error


def lease_name(stream: str) -> str:
    return f"packager/{stream}"


def new_holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class NotLeader(LookupError):
    """A fence asked for a stream this packager holds no lease of."""


class StreamLeadership:
    def __init__(
        self, leases: Leases, ttl: float, holder: str | None = None, *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        if not ttl > 0:
            raise ValueError(f"a lease needs a positive time to live, not {ttl}")
        self.leases = leases
        self.ttl = ttl
        self.holder = holder or new_holder_id()
        self.clock = clock
        self.held: dict[str, tuple[int, float]] = {}  # stream -> (epoch, valid until, local clock)
        self.on_lost: list[Callable[[str], None]] = []
        self.db_deadline = max(0.2, min(ttl / 2, 2.0))  # s to ride out a database error when taking
        self._free_at: dict[str, float] = {}  # stream led elsewhere -> when it may be free (local)
        self._trying: dict[str, asyncio.Lock] = {}
        self._sup: Supervisor | None = None
        self._task: asyncio.Task[None] | None = None

    # -- what this packager holds ------------------------------------------------------
    def leads(self, stream: str) -> bool:
        h = self.held.get(stream)
        return h is not None and self.clock() < h[1]

    def epoch(self, stream: str) -> int | None:
        """The epoch this packager holds the stream's lease at (None: it holds none)."""
        h = self.held.get(stream)
        return h[0] if h is not None else None

    def fence(self, stream: str) -> Fence:
        """What this packager's writes for ``stream`` carry; the database judges it."""
        h = self.held.get(stream)
        if h is None:
            raise NotLeader(f"{stream}: this packager ({self.holder}) holds no lease of it")
        return Fence(lease_name(stream), self.holder, h[0])

    def may_try(self, stream: str) -> bool:
        """Whether asking for the stream's lease can succeed yet (not led here, maybe free)."""
        return not self.leads(stream) and self.clock() >= self._free_at.get(stream, 0.0)

    # -- taking and losing ---------------------------------------------------------------
    async def try_lead(self, stream: str, *, force: bool = False) -> bool:
        """Lead ``stream`` if its lease is free or expired; True if this packager leads it.

        Without ``force`` it does not ask the database before the lease it last
        saw held elsewhere can have expired (``may_try``). A database that stays
        unreachable past a short deadline counts as "not now" (logged, counted).
        """
        if self.leads(stream):
            return True
        if not force and not self.may_try(stream):
            return False
        lock = self._trying.setdefault(stream, asyncio.Lock())
        async with lock:  # one request per stream at a time; other streams do not wait
            if self.leads(stream):
                return True
            if not force and not self.may_try(stream):
                return False
            sent = [self.clock()]

            def acquire() -> Grant:
                sent[0] = self.clock()
                return self.leases.acquire(lease_name(stream), self.holder, self.ttl)

            try:
                grant = await transient.call("lease_acquire", acquire, deadline=self.db_deadline)
            except Exception as exc:
                if not transient.is_transient(exc):
                    raise
                log.warning("%s: could not ask for the lease (%r); trying again later", stream, exc)
                self._free_at[stream] = self.clock() + min(RETRY_AFTER_FAILURE, self.ttl / 3)
                return False
            if not grant.granted:
                self._free_at[stream] = sent[0] + max(0.0, grant.expires_in)
                return False
            self._free_at.pop(stream, None)
            if stream not in self.held or self.held[stream][0] != grant.epoch:
                log.info("%s: this packager (%s) leads it now (epoch %d)", stream, self.holder,
                         grant.epoch)  # fmt: skip
            # valid from when we asked, not when the answer came: never longer than the lease
            self.held[stream] = (grant.epoch, sent[0] + self.ttl * VALID_FRACTION)
            return True

    def lost(self, stream: str) -> None:
        """A write of ours was refused as stale: another packager leads ``stream``. Drop it now."""
        if stream in self.held:
            log.warning("%s: a write at epoch %d was refused: another packager took over",
                        stream, self.held[stream][0])  # fmt: skip
        self._lose(stream)

    def _lose(self, stream: str) -> None:
        self._free_at[stream] = self.clock()  # ask (a read) before trying again
        if self.held.pop(stream, None) is not None:
            log.warning("%s: lost the packager lease; another packager leads it", stream)
            for cb in self.on_lost:
                try:
                    cb(stream)
                except Exception:  # one listener's bug must not keep the others uninformed
                    log.exception("%s: a listener of lost leases failed", stream)

    # -- renewal -------------------------------------------------------------------------------
    def start(self) -> None:
        self._sup = Supervisor("packager-leases")
        self._task = self._sup.spawn("packager-lease-renew", self._renew_loop)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            await self.renew_all()

    async def renew_all(self) -> None:
        """Renew every lease held, all at once (a slow stream does not delay the others)."""
        await asyncio.gather(*(self._renew(s, epoch) for s, (epoch, _) in list(self.held.items())))

    async def _renew(self, stream: str, epoch: int) -> None:
        sent = [self.clock()]
        h = self.held.get(stream)
        left = (h[1] - sent[0]) if h is not None else 0.0
        deadline = max(0.05, min(self.ttl / 3, left))

        def renew() -> bool:
            sent[0] = self.clock()
            return self.leases.renew(lease_name(stream), self.holder, epoch, self.ttl)

        try:
            ok = await transient.call("lease_renew", renew, deadline=deadline)
        except Exception as exc:  # noqa: BLE001 - the lease is kept while valid, else dropped
            valid = self.leads(stream)
            log.warning("%s: could not renew the lease (%r); %s", stream, exc,
                        "still valid here: trying again soon" if valid else "dropping it",
                        exc_info=not transient.is_transient(exc))  # fmt: skip
            if not valid:
                self._lose(stream)
            return
        if self.epoch(stream) != epoch:  # dropped, or taken anew, while we asked
            return
        if ok:
            self.held[stream] = (epoch, sent[0] + self.ttl * VALID_FRACTION)
        else:
            self._lose(stream)

    async def aclose(self) -> None:
        if self._sup is not None:
            await self._sup.aclose()
        for stream in list(self.held):
            try:
                await transient.call("lease_release", self.leases.release, lease_name(stream),
                                     self.holder, deadline=self.db_deadline)  # fmt: skip
            except Exception:
                log.exception("%s: could not release the lease", stream)
        self.held.clear()
