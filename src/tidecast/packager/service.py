"""Packager service: the I/O shell around ``PackagerCore``.

It consumes ``broadcast.>`` and ``segment.>``, hands each message to one task
per stream (so a slow stream never holds up another), feeds the core, and
carries out what the core decides:

- playlists go to the store through ``PlaylistSync`` (newest version per key,
  retried through store outages, stamped with the lease epoch and refused by
  the store once a newer leader wrote);
- segment rows, finished recordings and healed VODs go to the recorder through
  ``RecordingQueue`` (in order, retried through database outages);
- the core's deadlines run on each stream's own clock (``tick``).

With several packagers (``leadership``), each stream has one leader at a time:
a stand-by keeps no state for it and does not touch the database for its
messages; it takes the stream over when the lease is free, rebuilding the
stream from durable state only (``_take_over``). Without ``leadership`` (the
single packager of ``tidecast serve``) every stream is led here, epoch 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from tidecast import keys
from tidecast.bus.base import Bus, Delivery, Subscription
from tidecast.bus.consumer import consume, dead_letter_delivery
from tidecast.db import transient
from tidecast.db.leases import Fence
from tidecast.messages import PlaylistUpdated, SegmentReady
from tidecast.metrics import REGISTRY
from tidecast.origin.blocking import read_playlist
from tidecast.packager.core import (
    Action,
    FinishRecording,
    Listed,
    PackagerCore,
    PutMaster,
    PutPlaylist,
    Record,
    RewriteVod,
)
from tidecast.packager.hls import parse_media_playlist, stamp_epoch
from tidecast.packager.recording import RecordingQueue, SegmentRecorder
from tidecast.packager.sync import PlaylistSync, PutFn
from tidecast.store.base import ObjectNotFound, Store
from tidecast.supervise import Supervisor

log = logging.getLogger("tidecast.packager")

PublishedHook = Callable[[SegmentReady, float], None]
STREAM_QUEUE = 10_000  # messages waiting for one stream's task (backpressure past it)
RECORD_WAIT = 1.0  # seconds a segment waits for its row before it is listed anyway
NOTIFY_TIMEOUT = 2.0  # seconds a PlaylistUpdated publish may take before it is given up


class Leadership(Protocol):
    """What the packager needs from ``packager.leader.StreamLeadership``."""

    ttl: float
    on_lost: list[Callable[[str], None]]

    def leads(self, stream: str) -> bool: ...

    def may_try(self, stream: str) -> bool: ...

    async def try_lead(self, stream: str) -> bool: ...

    def epoch(self, stream: str) -> int | None: ...

    def fence(self, stream: str) -> Fence: ...

    def lost(self, stream: str) -> None: ...

    def start(self) -> None: ...

    async def aclose(self) -> None: ...


class TakeoverSource(Protocol):
    """What a packager taking a stream over reads from the database."""

    def current_broadcast(self, stream: str) -> tuple[str, float] | None: ...

    def recorded_state(self, broadcast: str) -> dict[tuple[str, int], bool]: ...

    def needs_vod(self, broadcast: str) -> bool: ...

    def live_broadcasts(self) -> dict[str, tuple[str, float]]: ...


class Packager:
    def __init__(
        self, store: Store, bus: Bus, *, window: int, target_duration: float,
        include_source: bool = True, recorder: SegmentRecorder | None = None,
        leadership: Leadership | None = None, takeover: TakeoverSource | None = None,
        put: PutFn | None = None, refused: tuple[type[BaseException], ...] = (),
        gap_after: float | None = None, end_gap_after: float | None = None,
        transient: Callable[[BaseException], bool] = lambda exc: False,
        ll_hls: bool = False, part_target: float = 1 / 3,
    ) -> None:  # fmt: skip
        self.store = store
        self.bus = bus
        self.window = window
        self.target_duration = target_duration
        self.recorder = recorder
        self.leadership = leadership
        self.takeover = takeover
        self.core = PackagerCore(window=window, target_duration=target_duration,
                                 include_source=include_source, gap_after=gap_after,
                                 end_gap_after=end_gap_after, ll_hls=ll_hls,
                                 part_target=part_target)  # fmt: skip
        self.sup = Supervisor("packager")
        self.refused = refused
        self.sync = PlaylistSync(put or self._plain_put, refused=refused, on_refused=self._refused,
                                 supervisor=self.sup, on_written=self._written)  # fmt: skip
        self.recording = (
            RecordingQueue(recorder, refused=refused, on_refused=self._refused, supervisor=self.sup,
                           transient=transient)
            if recorder is not None else None
        )  # fmt: skip
        self.hooks: list[PublishedHook] = []
        self._subs: list[Subscription] = []
        self._queues: dict[str, asyncio.Queue[Delivery]] = {}
        self._busy: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._replaying: str | None = None  # the stream being rebuilt: no writes
        self._recorded: dict[str, dict[tuple[str, int], bool]] = {}  # broadcast -> rows (gap?)
        self._finishing: list[FinishRecording] = []  # met during a replay
        self._floor: dict[str, int] = {}  # playlist key -> next msn the stored copy has
        self._seen: dict[str, float] = {}  # streams led elsewhere -> last message (monotonic)
        self._closing = False
        self._dead = REGISTRY.counter(
            "tidecast_packager_failed_messages_total",
            "Messages the packager could not handle (dead-lettered).", ("stream",),
        )  # fmt: skip
        self._notify_failed = REGISTRY.counter(
            "tidecast_packager_playlist_notify_failures_total",
            "PlaylistUpdated notifications that could not be published (origins poll anyway).",
            ("stream",),
        )  # fmt: skip
        self._notify_logged = -1e9

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self.leadership is None:  # the only packager: what is stored is stale
            await self._drop_stale_playlists()
        else:
            self.leadership.on_lost.append(self._forget)
            self.leadership.start()
            self.sup.spawn("packager-watch", self._watch_leaders)
        if self.recording is not None:
            self.recording.start()
        for pattern in ("broadcast.>", "segment.>"):
            sub = self.bus.subscribe(pattern)
            self._subs.append(sub)
            self.sup.spawn(f"packager {pattern}", self._consumer(sub))

    def _consumer(self, sub: Subscription) -> Callable[[], Awaitable[None]]:
        return lambda: consume(sub, self._dispatch, bus=self.bus, name="packager")

    def busy(self) -> bool:
        return bool(self._busy or any(q.qsize() for q in self._queues.values())
                    or any(sub.pending() for sub in self._subs))  # fmt: skip

    async def aclose(self, drain_timeout: float = 5.0) -> None:
        """Handle every message already delivered, end what waits to end, write
        everything out (each step bounded), then stop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        while loop.time() < deadline and self.busy():  # noqa: ASYNC110 (bounded shutdown drain)
            await asyncio.sleep(0.01)
        self._closing = True
        for sub in self._subs:
            await sub.aclose()
        for stream in list(self.core.streams):
            async with self._lock(stream):
                if self._may_write(stream):
                    await self._execute(stream, self.core.end_all(stream))
        await self.sync.flush(max(1.0, deadline - loop.time()))
        if self.recording is not None:
            await self.recording.flush(max(2.0, deadline - loop.time()))
        await self.sup.aclose()
        if self.leadership is not None:
            await self.leadership.aclose()

    async def _drop_stale_playlists(self) -> None:
        """Live playlists left by an earlier run describe nothing live: remove them."""
        for key in await self.store.list(keys.ROOT):
            if keys.is_live_playlist(key):
                await self.store.delete(key)

    async def _plain_put(self, key: str, data: bytes, epoch: int) -> None:
        await self.store.put(key, data)

    # ------------------------------------------------------------ messages
    def _lock(self, stream: str) -> asyncio.Lock:
        lock = self._locks.get(stream)
        if lock is None:
            lock = self._locks[stream] = asyncio.Lock()
        return lock

    async def _dispatch(self, delivery: Delivery) -> None:
        stream = getattr(delivery.message, "stream", None)
        if not isinstance(stream, str) or not stream:
            return
        q = self._queues.get(stream)
        if q is None:
            q = self._queues[stream] = asyncio.Queue(STREAM_QUEUE)
            self.sup.spawn(f"packager-stream {stream}", lambda: self._run_stream(stream, q),
                           kind="packager-stream")  # fmt: skip
        await q.put(delivery)  # waits while the stream's task is this far behind

    async def _run_stream(self, stream: str, q: asyncio.Queue[Delivery]) -> None:
        """One stream's messages, in arrival order, and its deadlines."""
        while True:
            due = self.core.next_deadline(stream)
            timeout = None if due is None else max(0.0, due - time.monotonic())
            try:
                d: Delivery | None = await asyncio.wait_for(q.get(), timeout)
            except TimeoutError:
                d = None
            self._busy.add(stream)
            try:
                async with self._lock(stream):
                    if d is not None:
                        await self._handle(stream, d)
                    if self._may_write(stream):
                        await self._execute(stream, self.core.tick(time.monotonic(), stream))
            finally:
                self._busy.discard(stream)

    async def _handle(self, stream: str, d: Delivery) -> None:
        try:
            if not await self._leads(stream):
                return
            await self._execute(stream, self.core.handle(d.message, time.monotonic()))
        except Exception as exc:
            # a message the core cannot take (input no stage should send, or a bug)
            self._dead.inc(stream=stream)
            log.exception("%s: could not handle %s on %s", stream, d.message.kind, d.subject)
            await dead_letter_delivery(self.bus, d, f"{type(exc).__name__}: {exc}", "packager")

    # ------------------------------------------------------------ actions
    def _may_write(self, stream: str) -> bool:
        if self._replaying == stream:
            return False
        return self.leadership is None or self.leadership.leads(stream)

    def _epoch(self, stream: str) -> int:
        return 0 if self.leadership is None else (self.leadership.epoch(stream) or 0)

    def _fence(self, stream: str) -> Fence | None:
        if self.leadership is None or self.leadership.epoch(stream) is None:
            return None
        return self.leadership.fence(stream)

    async def _execute(self, stream: str, actions: list[Action]) -> None:
        replay = self._replaying == stream
        for a in actions:
            if isinstance(a, Record):
                await self._record(stream, a, replay)
            elif replay:
                if isinstance(a, FinishRecording):
                    self._finishing.append(a)
                continue  # playlists are written after the replay, from the end state
            elif not self._may_write(stream):
                continue
            elif isinstance(a, PutPlaylist):
                self._put_playlist(stream, a)
            elif isinstance(a, PutMaster):
                self._put_master(stream, a)
            elif isinstance(a, FinishRecording):
                if self.recording is not None:
                    self.recording.finish(stream, a.broadcast, self._fence(stream))
            elif isinstance(a, RewriteVod):
                if self.recording is not None:
                    self.recording.rewrite(stream, a.broadcast, self._fence(stream))
            elif isinstance(a, Listed):
                now = time.time()
                for hook in self.hooks:
                    hook(a.seg, now)

    async def _record(self, stream: str, a: Record, replay: bool) -> None:
        if self.recording is None or not (replay or self._may_write(stream)):
            return
        seg = a.seg
        if replay:  # the last leader may have recorded it already
            state = self._recorded.get(seg.broadcast, {}).get((seg.rendition, seg.sequence))
            if state is not None and (state is False or seg.gap):
                return
        await self.recording.record(stream, seg, a.program_date_time, heal=a.heal,
                                    fence=self._fence(stream), wait=0.0 if replay else RECORD_WAIT)  # fmt: skip

    def _put_playlist(self, stream: str, a: PutPlaylist) -> None:
        floor = self._floor.get(a.key, 0)
        if a.next_msn < floor and not a.ended:
            log.warning("%s: not writing %s behind its stored copy (%d < %d)", stream, a.rendition,
                        a.next_msn, floor)  # fmt: skip
            return
        self._floor.pop(a.key, None)
        epoch = self._epoch(stream)
        self.sync.want(stream, a.key, stamp_epoch(a.text, epoch).encode(), epoch)

    def _written(self, stream: str, key: str, data: bytes) -> None:
        """A live media playlist is stored: tell the origins (blocking requests wait on
        it). Not durable and not waited for: the write path never waits on the bus."""
        parsed = keys.parse(key)
        if parsed is None or parsed.kind != "live_playlist":
            return
        try:
            msn, part, ended = read_playlist(data).position
            msg = PlaylistUpdated(stream, parsed.rendition, msn, part, ended, time.time())
        except Exception:  # a bug here must not stop the playlist writes
            self._notify_failed.inc(stream=stream)
            log.exception("%s: no PlaylistUpdated for %s", stream, key)
            return
        self.sup.run(f"playlist-notify {key}", self._notify(msg))

    async def _notify(self, msg: PlaylistUpdated) -> None:
        try:
            async with asyncio.timeout(NOTIFY_TIMEOUT):
                await self.bus.publish(f"playlist.{msg.stream}", msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a notification: origins poll the store anyway
            self._notify_failed.inc(stream=msg.stream)
            now = time.monotonic()
            if now - self._notify_logged > 30.0:  # at most one line per 30 s while the bus is away
                self._notify_logged = now
                log.warning("%s: could not publish PlaylistUpdated for %s: %r", msg.stream, msg.rendition, exc)

    def _put_master(self, stream: str, a: PutMaster) -> None:
        st = self.core.streams.get(stream)
        listed = tuple(keys.live_playlist(stream, n) for n in (st.renditions if st else ()))
        epoch = self._epoch(stream)
        self.sync.want(stream, a.key, stamp_epoch(a.text, epoch).encode(), epoch, after=listed)

    # ------------------------------------------------------------ leadership
    def _refused(self, stream: str, exc: BaseException) -> None:
        """A write was refused: a newer leader has the stream. Stop here at once."""
        log.warning("%s: a newer packager leads the stream (%s); dropping it here", stream, exc)
        if self.leadership is not None:
            self.leadership.lost(stream)
        self._forget(stream)

    async def _leads(self, stream: str) -> bool:
        """Whether this packager handles ``stream``'s messages: always when it is the only
        one; otherwise only while it holds the lease (taking a free one over)."""
        if self.leadership is None:
            return True
        if self.leadership.leads(stream):
            return True
        if stream in self.core.streams:  # the lease ran out under us: rebuild before writing
            self._forget(stream)
        self._seen[stream] = time.monotonic()
        if self._closing or not self.leadership.may_try(stream):
            return False
        if not await self.leadership.try_lead(stream):
            return False
        await self._take_over(stream)
        return True

    async def _watch_leaders(self) -> None:
        """Take over streams whose leader went quiet even when no message comes (the
        last message of a broadcast may be the one its dead leader never handled)."""
        assert self.leadership is not None
        while True:
            await asyncio.sleep(self.leadership.ttl / 2)
            now = time.monotonic()
            if self.takeover is not None:  # a live stream needs a leader even if no message came
                try:
                    live = await transient.call("live_broadcasts", self.takeover.live_broadcasts, deadline=1.0)
                except Exception as exc:  # noqa: BLE001 - the streams seen on the bus are still watched
                    log.warning("could not read the live broadcasts (%r)", exc)
                    live = {}
                for stream in live:
                    self._seen.setdefault(stream, now)
            for stream, seen in list(self._seen.items()):
                if now - seen > 600:
                    del self._seen[stream]
                    continue
                if self.leadership.leads(stream) or not self.leadership.may_try(stream):
                    continue
                try:
                    async with self._lock(stream):
                        if await self.leadership.try_lead(stream):
                            await self._take_over(stream)
                            await self._execute(stream, self.core.tick(time.monotonic(), stream))
                except Exception:
                    log.exception("%s: taking over failed; trying again", stream)

    def _forget(self, stream: str) -> None:
        self.sync.forget(stream)
        if self.recording is not None:
            self.recording.forget(stream)
        if self.core.forget(stream):
            log.info("%s: no longer led here; state dropped", stream)

    async def _take_over(self, stream: str) -> None:
        """Rebuild a stream led elsewhere until now, from durable state only.

        The current broadcast comes from the database and its messages from the
        bus's log; replaying them gives the same playlists the last leader built
        (the same inputs in the same order). Sequence numbers continue from the
        stored playlists, segments already recorded are not recorded again, and
        a playlist is never written behind its stored copy.
        """
        self.core.forget(stream)
        self._seen.pop(stream, None)
        if self.takeover is None:
            return
        current = await asyncio.to_thread(self.takeover.current_broadcast, stream)
        if current is None:
            return
        broadcast, started_at = current
        await self._seed_from_store(stream, broadcast)
        self._recorded[broadcast] = await asyncio.to_thread(self.takeover.recorded_state, broadcast)
        t0 = time.monotonic()
        messages = await self.bus.replay((f"broadcast.{stream}", f"segment.{stream}"), started_at - 5.0)
        self._replaying = stream
        self._finishing = []
        try:
            for m in messages:
                if getattr(m, "broadcast", None) == broadcast:  # not an earlier broadcast's
                    await self._execute(stream, self.core.handle(m, time.monotonic()))
        finally:
            self._replaying = None
            self._recorded.pop(broadcast, None)
        if self.recording is not None and not self.recording.failing:  # recorded before listed
            await self.recording.settle(stream, RECORD_WAIT * 5)
        await self._execute(stream, self.core.render_all(stream))
        for fin in self._finishing:  # the last leader may have died before writing the VOD
            if self.takeover is not None and await asyncio.to_thread(self.takeover.needs_vod, fin.broadcast):
                await self._execute(stream, [fin])
        self._finishing = []
        log.info("%s: took over broadcast %s: %d messages replayed in %.2f s", stream, broadcast,
                 len(messages), time.monotonic() - t0)  # fmt: skip

    async def _seed_from_store(self, stream: str, broadcast: str) -> None:
        """Where the current broadcast's sequence numbers start, read back from the
        stored playlists. Their segments of earlier broadcasts seed the new state (the
        window keeps them, as the last leader's did), and each stored playlist sets a
        floor the new leader never writes below."""
        base: int | None = None
        next_msn = 0
        for key in await self.store.list(keys.stream_prefix(stream)):
            parsed = keys.parse(key)
            if parsed is None or parsed.kind != "live_playlist":
                continue
            try:
                stored = parse_media_playlist((await self.store.get(key)).decode(), self.window,
                                              self.target_duration)  # fmt: skip
            except (ObjectNotFound, ValueError, UnicodeDecodeError) as exc:
                log.warning("%s: cannot read back %s: %r", stream, key, exc)
                continue
            b = self.core.seed_rendition(stream, parsed.rendition, stored, broadcast)
            base = b if base is None else base
            self._floor[key] = stored.next_msn
            next_msn = max(next_msn, stored.next_msn)
        self.core.stream(stream).next_msn = base if base is not None else next_msn

