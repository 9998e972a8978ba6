"""RecordingQueue: what the packager tells the recorder, in order, through outages.

Segments are recorded (rows in the database), broadcasts finished into VOD, and
healed VODs written again — in the order the packager decided them, so a
broadcast is finished only after its segments are recorded. While the
database answers, a segment is recorded before it is listed (``record`` waits
for it, briefly). When it does not, the queue keeps the work and retries it
with backoff, and live playlists go on meanwhile: a database outage delays the
recording, never the stream. The queue is bounded; past the bound the oldest
segment rows are dropped and counted (the VOD then lists those as gaps), never a
finish. A refused write (a newer packager leads the stream: fencing) drops the
stream's work at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from tidecast.db.leases import Fence
from tidecast.messages import SegmentReady
from tidecast.metrics import REGISTRY, Registry
from tidecast.retry import Backoff
from tidecast.supervise import Supervisor

log = logging.getLogger("tidecast.packager.recording")

REWRITE_AFTER = 1.0  # seconds of quiet after a heal before its VOD is written again


class SegmentRecorder(Protocol):
    """What the packager needs from the recorder."""

    async def record(self, seg: SegmentReady, program_date_time: float, *, heal: bool = False,
                     fence: Fence | None = None) -> None: ...  # fmt: skip

    async def finished(self, stream: str, broadcast: str, *, fence: Fence | None = None) -> object: ...

    async def rewrite_vod(self, broadcast: str, *, fence: Fence | None = None) -> None: ...


@dataclass(slots=True)
class _Op:
    kind: str  # "record" | "finish"
    stream: str
    broadcast: str
    fence: Fence | None
    seg: SegmentReady | None = None
    pdt: float = 0.0
    heal: bool = False
    done: asyncio.Future[None] | None = None
    failures: int = 0


@dataclass(slots=True)
class RecordingStats:
    recorded: int = 0
    finished: int = 0
    rewrites: int = 0
    retries: int = 0
    failed: int = 0  # gave up on (not a transient error, and it kept failing)
    dropped: int = 0
    refused: int = 0
    waiting: dict[str, int] = field(default_factory=dict)


class RecordingQueue:
    def __init__(
        self, recorder: SegmentRecorder, *, refused: tuple[type[BaseException], ...],
        on_refused: Callable[[str, BaseException], None], supervisor: Supervisor,
        max_ops: int = 100_000, backoff: Backoff | None = None, registry: Registry = REGISTRY,
        transient: Callable[[BaseException], bool] = lambda exc: False, give_up_after: int = 20,
    ) -> None:  # fmt: skip
        self.recorder = recorder
        self.transient = transient  # retried for as long as it takes; other errors give_up_after tries
        self.give_up_after = give_up_after
        self.refused = refused
        self.on_refused = on_refused
        self.sup = supervisor
        self.max_ops = max_ops
        self.backoff = backoff or Backoff(initial=0.2, maximum=5.0)
        self.stats = RecordingStats()
        self._ops: deque[_Op] = deque()
        self._rewrites: dict[tuple[str, str], tuple[float, Fence | None]] = {}
        self._wake = asyncio.Event()
        self.failing = False  # the last write failed: it is being retried
        self._retries = registry.counter(
            "tidecast_packager_recording_retries_total",
            "Recording writes (segment rows, VOD) that failed and were tried again.", ("stream",),
        )  # fmt: skip
        self._dropped = registry.counter(
            "tidecast_packager_records_dropped_total",
            "Segment rows dropped because the recording queue was full.", ("stream",),
        )  # fmt: skip

    def start(self) -> None:
        self.sup.spawn("packager-recording", self._run)

    def pending(self, stream: str | None = None) -> int:
        return sum(1 for op in self._ops if stream is None or op.stream == stream) + sum(
            1 for s, _ in self._rewrites if stream is None or s == stream
        )

    async def record(
        self, stream: str, seg: SegmentReady, pdt: float, *, heal: bool, fence: Fence | None,
        wait: float,
    ) -> None:  # fmt: skip
        """Queue a segment row; wait (at most ``wait``) for it while the database answers
        (not while the queue is retrying a failure: then the stream goes on at once)."""
        op = _Op("record", stream, seg.broadcast, fence, seg, pdt, heal)
        if not self.failing and wait > 0:
            op.done = asyncio.get_running_loop().create_future()
        self._push(op)
        if op.done is not None:
            try:
                await asyncio.wait_for(asyncio.shield(op.done), wait)
            except TimeoutError:
                log.warning("%s: recording segment %d of %s is slow; listing it anyway", stream,
                            seg.sequence, seg.rendition)  # fmt: skip

    def finish(self, stream: str, broadcast: str, fence: Fence | None) -> None:
        self._push(_Op("finish", stream, broadcast, fence))

    def rewrite(self, stream: str, broadcast: str, fence: Fence | None) -> None:
        """A recording healed: write its VOD again once heals stop coming for a moment."""
        self._rewrites[(stream, broadcast)] = (time.monotonic() + REWRITE_AFTER, fence)
        self._wake.set()

    def forget(self, stream: str) -> None:
        for op in [op for op in self._ops if op.stream == stream]:
            self._ops.remove(op)
            self._settle(op)
        for key in [k for k in self._rewrites if k[0] == stream]:
            del self._rewrites[key]

    async def settle(self, stream: str, timeout: float) -> bool:
        """Wait (at most ``timeout``) until ``stream`` has no segment row waiting."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while any(op.stream == stream for op in self._ops) and loop.time() < end:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return not any(op.stream == stream for op in self._ops)

    async def flush(self, timeout: float) -> bool:
        """Wait until every queued write is done (at most ``timeout``); due rewrites too."""
        for key, (_, fence) in list(self._rewrites.items()):
            self._rewrites[key] = (0.0, fence)
        self._wake.set()
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while (self._ops or self._rewrites) and loop.time() < end:  # noqa: ASYNC110 (bounded)
            await asyncio.sleep(0.02)
        return not (self._ops or self._rewrites)

    def _push(self, op: _Op) -> None:
        if len(self._ops) >= self.max_ops:
            victim = next((o for o in self._ops if o.kind == "record"), None)
            if victim is not None:
                self._ops.remove(victim)
                self._settle(victim)
                self.stats.dropped += 1
                self._dropped.inc(stream=victim.stream)
                log.error("%s: recording queue full; segment %s dropped from the recording",
                          victim.stream, victim.seg.sequence if victim.seg else "?")  # fmt: skip
        self._ops.append(op)
        self._wake.set()

    @staticmethod
    def _settle(op: _Op) -> None:
        if op.done is not None and not op.done.done():
            op.done.set_result(None)

    async def _run(self) -> None:
        delays = self.backoff.delays()
        while True:
            if not self._ops:
                due = [k for k, (t, _) in self._rewrites.items() if t <= time.monotonic()]
                if not due:
                    self._wake.clear()
                    soon = min((t for t, _ in self._rewrites.values()), default=None)
                    timeout = None if soon is None else max(0.0, soon - time.monotonic())
                    with contextlib.suppress(TimeoutError):  # a rewrite came due
                        await asyncio.wait_for(self._wake.wait(), timeout)
                    continue
                key = due[0]
                _, fence = self._rewrites.pop(key)
                op = _Op("rewrite", key[0], key[1], fence)
            else:
                op = self._ops[0]
            try:
                await self._do(op)
            except self.refused as exc:
                self.stats.refused += 1
                log.warning("%s: recording write refused: %s", op.stream, exc)
                self.forget(op.stream)
                self.on_refused(op.stream, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - retried below, in order
                op.failures += 1
                if not self.transient(exc) and op.failures >= self.give_up_after:
                    self.stats.failed += 1
                    log.error("%s: giving up on %s of %s after %d attempts: %r", op.stream, op.kind,
                              op.broadcast, op.failures, exc)  # fmt: skip
                    if self._ops and self._ops[0] is op:
                        self._ops.popleft()
                    self._settle(op)
                    continue
                self.failing = True
                self.stats.retries += 1
                self._retries.inc(stream=op.stream)
                if op.kind == "rewrite":
                    self._rewrites.setdefault((op.stream, op.broadcast), (0.0, op.fence))
                delay = next(delays)
                log.warning("%s: %s of %s failed (%r); trying again in %.1f s", op.stream, op.kind,
                            op.broadcast, exc, delay)  # fmt: skip
                await asyncio.sleep(delay)
                continue
            delays = self.backoff.delays()
            self.failing = False
            if op.kind != "rewrite" and self._ops and self._ops[0] is op:
                self._ops.popleft()
            self._settle(op)

    async def _do(self, op: _Op) -> None:
        if op.kind == "record":
            assert op.seg is not None
            await self.recorder.record(op.seg, op.pdt, heal=op.heal, fence=op.fence)
            self.stats.recorded += 1
        elif op.kind == "finish":
            await self.recorder.finished(op.stream, op.broadcast, fence=op.fence)
            self.stats.finished += 1
        else:
            await self.recorder.rewrite_vod(op.broadcast, fence=op.fence)
            self.stats.rewrites += 1
