"""Packager leadership: exactly one packager writes a stream's playlists at a time.

Each stream has a lease in the database (``db.leases``), taken by the first
packager that sees one of the stream's messages and renewed in the background
every third of its time to live. Its holder stops writing as soon as a renewal
fails or the lease runs out locally; another packager takes it over once it has
expired and rebuilds the stream from the bus's durable log (see
``Packager._take_over``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable

from tidecast.db.leases import Leases

log = logging.getLogger("tidecast.packager.leader")


def lease_name(stream: str) -> str:
    return f"packager/{stream}"


def new_holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class StreamLeadership:
    def __init__(self, leases: Leases, ttl: float, holder: str | None = None) -> None:
        self.leases = leases
        self.ttl = ttl
        self.holder = holder or new_holder_id()
        self.held: dict[str, tuple[int, float]] = {}  # stream -> (epoch, valid until, monotonic)
        self.on_lost: list[Callable[[str], None]] = []
        self._task: asyncio.Task[None] | None = None

    def leads(self, stream: str) -> bool:
        h = self.held.get(stream)
        return h is not None and time.monotonic() < h[1]

    async def try_lead(self, stream: str) -> bool:
        t0 = time.monotonic()
        epoch = await asyncio.to_thread(
            self.leases.acquire, lease_name(stream), self.holder, self.ttl
        )
        if epoch is None:
            return False
        if stream not in self.held:
            log.info("%s: this packager (%s) leads it now (epoch %d)", stream, self.holder, epoch)
        # valid from when we asked, not when the answer came: never longer than the lease
        self.held[stream] = (epoch, t0 + self.ttl * 0.9)
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._renew_loop(), name="packager-leases")

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            for stream, (epoch, _) in list(self.held.items()):
                t0 = time.monotonic()
                try:
                    ok = await asyncio.to_thread(
                        self.leases.renew, lease_name(stream), self.holder, epoch, self.ttl
                    )
                except Exception:
                    log.exception("%s: could not renew the lease", stream)
                    ok = self.leads(stream)  # keep it while it is still valid; retry soon
                    if ok:
                        continue
                if ok:
                    self.held[stream] = (epoch, t0 + self.ttl * 0.9)
                else:
                    self._lose(stream)

    def _lose(self, stream: str) -> None:
        if self.held.pop(stream, None) is not None:
            log.warning("%s: lost the packager lease; another packager leads it", stream)
            for cb in self.on_lost:
                cb(stream)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for stream in list(self.held):
            try:
                await asyncio.to_thread(self.leases.release, lease_name(stream), self.holder)
            except Exception:
                log.exception("%s: could not release the lease", stream)
        self.held.clear()
