"""Blocking playlist reload and hinted parts: the I/O shell around ``origin.blocking``.

A request with delivery directives (``?_HLS_msn=M[&_HLS_part=P][&_HLS_skip=YES]``)
is checked against the stored playlist and answered at once, refused (400),
or held until the playlist holds what it asks for — at most ``hold_for`` (three
target durations, capped at ``max_hold``), then 503 with Retry-After (RFC 8216bis
6.2.5.2). A request for a part that is not stored yet but is the playlist's
preload hint (or the part right after it) waits for it (``part_wait``), then is
served; any other missing part is 404 at once (6.2.6).

One watch per playlist key, however many requests wait on it: the watch reads
the stored playlist once per change, never once per request — a read in
flight is shared by every request that needs it, a copy read less than a poll
interval ago is reused — and wakes all its waiters together. It learns of
changes from ``PlaylistUpdated`` on ``playlist.>`` (the packager publishes one
after each live media playlist write) and, while anyone waits, also re-reads
the store every ``poll`` seconds, so a lost notification (the subject is not
durable) costs one poll interval at most. A notification only makes the watch
read the store: what a request gets is always what the store holds.

Bounded: at most ``max_waiting`` requests wait at once per origin (past it,
503 with Retry-After at once), at most ``max_keys`` playlists are watched
(idle watches are forgotten first), every wait ends at its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from tidecast import keys
from tidecast.bus.base import Bus, Delivery, Subscription
from tidecast.bus.consumer import consume
from tidecast.messages import PlaylistUpdated
from tidecast.metrics import REGISTRY, Registry
from tidecast.origin import files
from tidecast.origin.blocking import (
    BadDirective,
    Directives,
    PartRef,
    PartVerdict,
    PlaylistState,
    Verdict,
    decide,
    delta_update,
    hold_for,
    parse_directives,
    part_wait,
    part_wait_verdict,
    read_playlist,
)
from tidecast.store.base import ObjectNotFound, Store
from tidecast.supervise import Supervisor

log = logging.getLogger("tidecast.origin.reload")

POLL = 0.1  # seconds between store re-reads of a playlist someone waits on
MAX_WAITING = 5000  # requests one origin holds at once (each is a socket and a coroutine)
MAX_KEYS = 4096  # playlists watched at once
RETRY_AFTER = "1"
ERROR_LOG_EVERY = 30.0  # seconds between log lines about one playlist's failing re-reads


class PartOutcome(Enum):
    READY = "ready"  # stored now: serve it
    GONE = "gone"  # 404
    TIMEOUT = "timeout"  # 503: hinted, but not stored within the wait


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a request with delivery directives."""

    status: int  # 200, 400 or 503
    body: bytes = b""
    detail: str = ""
    blocking: bool = False  # a blocking request answered: cacheable under its query
    ended: bool = False
    target_duration: int = 0
    read_at: float = 0.0  # wall clock of the store read the body comes from


class _Watch:
    """What this origin knows of one stored playlist, and who waits on it."""

    __slots__ = ("body", "changed", "error_logged", "key", "kick", "notes", "poller", "read_at",
                 "read_notes", "reading", "state", "wall", "waiters")  # fmt: skip

    def __init__(self, key: str) -> None:
        self.key = key
        self.body: bytes | None = None
        self.state: PlaylistState | None = None  # None: not read yet, or not stored
        self.read_at = -1e9  # monotonic time of the last completed read
        self.wall = 0.0
        self.changed = asyncio.Event()  # replaced after each change: waiters hold the old one
        self.kick = asyncio.Event()  # a notification: the poller reads now
        self.notes = 0  # notifications received
        self.read_notes = 0  # notifications received when the last read started
        self.waiters = 0
        self.reading: asyncio.Task[None] | None = None
        self.poller: asyncio.Task[None] | None = None
        self.error_logged = -1e9

    @property
    def stale(self) -> bool:
        """A notification came after the last read began: the store may hold more."""
        return self.notes != self.read_notes


class ReloadService:
    def __init__(
        self, store: Store, bus: Bus | None = None, *, max_hold: float, poll: float = POLL,
        max_waiting: int = MAX_WAITING, max_keys: int = MAX_KEYS, registry: Registry = REGISTRY,
    ) -> None:  # fmt: skip
        if max_hold <= 0 or poll <= 0 or max_waiting < 0 or max_keys < 1:
            raise ValueError(f"bad reload bounds: hold {max_hold}, poll {poll}, waiting {max_waiting}")
        self.store = store
        self.bus = bus
        self.max_hold = max_hold
        self.poll = poll
        self.max_waiting = max_waiting
        self.max_keys = max_keys
        self.waiting = 0
        self._watches: OrderedDict[str, _Watch] = OrderedDict()
        self._exists: dict[str, asyncio.Task[bool]] = {}
        self._reads: set[asyncio.Task[None]] = set()
        self._sub: Subscription | None = None
        self._closed = False
        self.sup = Supervisor("reload")
        self.requests = registry.counter(
            "tidecast_origin_blocking_requests_total",
            "Playlist requests with delivery directives, by result (immediate, waited, too_far, "
            "bad, timeout, overloaded).", ("result",),
        )  # fmt: skip
        self.part_requests = registry.counter(
            "tidecast_origin_part_waits_total",
            "Requests for parts not stored yet, by result (ready, gone, timeout, overloaded).",
            ("result",),
        )  # fmt: skip
        self.store_reads = registry.counter(
            "tidecast_origin_blocking_playlist_reads_total",
            "Store reads of playlists that blocking requests wait on (one per change, shared).",
        )
        self.read_errors = registry.counter(
            "tidecast_origin_blocking_read_errors_total", "Failed store re-reads of watched playlists."
        )
        self.waiting_gauge = registry.gauge(
            "tidecast_origin_blocking_waiting", "Requests waiting for a playlist or a part right now."
        )

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Listen for ``PlaylistUpdated`` (without a bus: polling only)."""
        if self.bus is None or self._sub is not None:
            return
        sub = self._sub = self.bus.subscribe("playlist.>")
        bus = self.bus
        self.sup.spawn("reload-notifications", lambda: consume(sub, self._on_notice, bus=bus, name="reload"))

    async def aclose(self) -> None:
        self._closed = True
        if self._sub is not None:
            await self._sub.aclose()
        for t in [*self._reads, *self._exists.values()]:
            t.cancel()
        await self.sup.aclose()
        await asyncio.gather(*self._reads, *self._exists.values(), return_exceptions=True)

    async def _on_notice(self, d: Delivery) -> None:
        msg = d.message
        if not isinstance(msg, PlaylistUpdated):
            return  # another kind on this subject: not ours
        w = self._watches.get(keys.live_playlist(msg.stream, msg.rendition))
        if w is None:
            return  # nobody asked about it lately: the next request reads the store anyway
        if w.state is None or w.state.position != (msg.msn, msg.part, msg.ended):
            w.notes += 1
            w.kick.set()

    # ------------------------------------------------------------ playlists
    async def playlist(self, key: str, query: str) -> Reply | None:
        """The answer to a playlist request with query ``query``; None: it carries no
        delivery directives (serve it as usual). Raises ``ObjectNotFound`` when the
        playlist is not stored, and the store's errors when it does not answer."""
        try:
            directives = parse_directives(query)
        except BadDirective as exc:
            self.requests.inc(result="bad")
            return Reply(400, detail=str(exc))
        if directives is None:
            return None
        w = self._watch(key)
        await self._current(w)
        if w.state is None or w.body is None:
            raise ObjectNotFound(key)
        decision = decide(w.state, directives)
        if decision.verdict is Verdict.TOO_FAR:
            self.requests.inc(result="too_far")
            return Reply(400, detail=decision.detail)
        if decision.verdict is Verdict.ANSWER:
            self.requests.inc(result="immediate")
            return self._answer(w, directives, decision.skip)
        if not self._admit():
            self.requests.inc(result="overloaded")
            return Reply(503, detail="too many requests are waiting for playlists; try again")
        hold = hold_for(w.state, self.max_hold)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + hold
        self._enter(w)
        try:
            while True:
                changed = w.changed
                if w.state is not None and w.body is not None:
                    decision = decide(w.state, directives)
                    if decision.verdict is Verdict.ANSWER:
                        self.requests.inc(result="waited")
                        return self._answer(w, directives, decision.skip)
                    if decision.verdict is Verdict.TOO_FAR:  # the playlist started over meanwhile
                        self.requests.inc(result="too_far")
                        return Reply(400, detail=decision.detail)
                left = deadline - loop.time()
                if left <= 0 or not await _wait(changed, left):
                    break
        finally:
            self._leave(w)
        self.requests.inc(result="timeout")
        what = f"segment {directives.msn}" + (f" part {directives.part}" if directives.part is not None else "")
        return Reply(503, detail=f"{what} was not in the playlist within {hold:g} s; try again")

    def _answer(self, w: _Watch, d: Directives, skip: bool) -> Reply:
        state, body = w.state, w.body
        assert state is not None and body is not None
        if skip and state.can_skip_until is not None:
            body = delta_update(body, state.can_skip_until)
        return Reply(200, body, blocking=d.blocking and state.can_block and not state.ended,
                     ended=state.ended, target_duration=state.target_duration, read_at=w.wall)  # fmt: skip

    # ------------------------------------------------------------ parts
    async def part(self, key: str, ref: PartRef) -> PartOutcome:
        """Wait for a part that is not stored (yet): READY once it is, GONE when it is
        not coming (404), TIMEOUT when it was hinted but did not come in time (503).
        Raises the store's errors when it does not answer."""
        if await self._stored(key):
            return PartOutcome.READY
        pkey = keys.live_playlist(ref.stream, ref.rendition)
        w = self._watch(pkey)
        try:
            await self._current(w)
        except ObjectNotFound:
            self.part_requests.inc(result="gone")
            return PartOutcome.GONE
        if part_wait_verdict(w.state, pkey, ref) is PartVerdict.GONE:
            self.part_requests.inc(result="gone")
            return PartOutcome.GONE
        if not self._admit():
            self.part_requests.inc(result="overloaded")
            return PartOutcome.TIMEOUT
        loop = asyncio.get_running_loop()
        deadline = loop.time() + part_wait(w.state, self.max_hold)
        self._enter(w)
        try:
            while True:
                changed = w.changed
                if await self._stored(key):
                    self.part_requests.inc(result="ready")
                    return PartOutcome.READY
                if part_wait_verdict(w.state, pkey, ref) is PartVerdict.GONE:
                    self.part_requests.inc(result="gone")
                    return PartOutcome.GONE
                left = deadline - loop.time()
                if left <= 0:
                    break
                await _wait(changed, min(left, self.poll))  # a playlist change, or look again
        finally:
            self._leave(w)
        self.part_requests.inc(result="timeout")
        return PartOutcome.TIMEOUT

    async def _stored(self, key: str) -> bool:
        """Is the object stored? One look at a time per key, shared."""
        task = self._exists.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self.store.exists(key), name=f"exists {key}")
            self._exists[key] = task
            task.add_done_callback(lambda t: self._exists.pop(key, None) if self._exists.get(key) is t else None)
            task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    # ------------------------------------------------------------ watches
    def _watch(self, key: str) -> _Watch:
        w = self._watches.get(key)
        if w is not None:
            self._watches.move_to_end(key)
            return w
        w = self._watches[key] = _Watch(key)
        if len(self._watches) > self.max_keys:
            idle = [k for k, v in self._watches.items() if v.waiters == 0 and v.reading is None and v is not w]
            for k in idle[: len(self._watches) - self.max_keys]:
                del self._watches[k]
        return w

    def _admit(self) -> bool:
        return self.waiting < self.max_waiting

    def _enter(self, w: _Watch) -> None:
        self.waiting += 1
        self.waiting_gauge.set(self.waiting)
        w.waiters += 1
        if w.poller is None and not self._closed:
            w.poller = self.sup.run(f"reload-poll {w.key}", self._poll(w))

    def _leave(self, w: _Watch) -> None:
        self.waiting -= 1
        self.waiting_gauge.set(self.waiting)
        w.waiters -= 1

    async def _current(self, w: _Watch) -> None:
        """Make ``w`` hold a fresh enough copy: one read less than a poll interval ago
        with no notification since is reused; otherwise read (or join the read in flight)."""
        if w.reading is None and not w.stale and time.monotonic() - w.read_at < self.poll:
            return
        await self._refresh(w)

    async def _refresh(self, w: _Watch) -> None:
        task = w.reading
        if task is None:
            task = w.reading = asyncio.get_running_loop().create_task(self._read(w), name=f"read {w.key}")
            self._reads.add(task)
            task.add_done_callback(self._reads.discard)
            task.add_done_callback(_retrieve)
        await asyncio.shield(task)

    async def _read(self, w: _Watch) -> None:
        notes = w.notes
        try:
            self.store_reads.inc()
            try:
                body: bytes | None = await self.store.get(w.key)
            except ObjectNotFound:
                body = None
            w.read_at, w.wall, w.read_notes = time.monotonic(), time.time(), notes
            if body != w.body:
                w.body, w.state = body, (read_playlist(body) if body is not None else None)
                w.changed.set()  # everyone waiting looks again
                w.changed = asyncio.Event()
            if body is None:
                raise ObjectNotFound(w.key)
        finally:
            w.reading = None

    async def _poll(self, w: _Watch) -> None:
        """Re-read the playlist while anyone waits on it: at once after a notification,
        else every poll interval. Ends (and says so) when the last waiter has gone."""
        while True:
            if w.waiters <= 0 or self._closed:
                w.poller = None
                return
            if not w.stale:
                await _wait(w.kick, max(0.0, self.poll - (time.monotonic() - w.read_at)))
                w.kick.clear()
                if w.waiters <= 0 or self._closed:
                    continue
            try:
                await self._refresh(w)
            except ObjectNotFound:
                await asyncio.sleep(self.poll)  # not stored (now): its waiters time out
            except asyncio.CancelledError:
                w.poller = None
                raise
            except Exception as exc:  # noqa: BLE001 - the store is away: its waiters time out
                self.read_errors.inc()
                now = time.monotonic()
                if now - w.error_logged > ERROR_LOG_EVERY:
                    w.error_logged = now
                    log.warning("could not re-read %s for blocking requests: %r", w.key, exc)
                await asyncio.sleep(self.poll)


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; True if it was set."""
    if event.is_set():
        return True
    if timeout <= 0:
        return False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a shared task's failure as seen: its awaiters (if any are left) re-raise it."""
    if not task.cancelled():
        task.exception()


# ---------------------------------------------------------------- HTTP


def served_reply(reply: Reply, req_headers: Mapping[str, str], head: bool) -> files.ServedObject:
    """The HTTP response for a ``Reply``, as ``files.respond`` would build it.

    A blocking request's answer may be cached under its URL, query included, for a
    target duration: it holds what was asked for and stays a right answer (RFC
    8216bis 6.2.5.2: the whole playlist, even when newer segments follow). A
    request that only asks for a delta update keeps the live playlist's headers.
    Errors are never cached (``no-store``); 503 says when to try again."""
    if reply.status != 200:
        body = json.dumps({"detail": reply.detail}).encode()
        headers = {"content-type": "application/json", "content-length": str(len(body)),
                   "cache-control": "no-store"}  # fmt: skip
        if reply.status == 503:
            headers["retry-after"] = RETRY_AFTER
        return files.ServedObject(reply.status, headers, b"" if head else body)
    body = reply.body
    etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    served = files.respond(".m3u8", etag, reply.read_at or time.time(), len(body),
                           lambda start, length: body[start : start + length], req_headers, head,
                           ended=reply.ended)  # fmt: skip
    if reply.blocking:
        served.headers["cache-control"] = f"public, max-age={max(1, reply.target_duration)}"
    return served
