"""TranscodeCoordinator: lanes of worker processes fed from the bus.

Live jobs arrive on ``job.transcode.<stream>`` (work-queue group ``transcode``:
with several coordinators, each job goes to one). A *lane* is one worker
process and one loop: the loop pulls a job (``sub.next()``) only when its
worker is free, so a coordinator never holds more unacknowledged jobs than it
has lanes; queued jobs wait on the bus, where no ack clock runs and any other
coordinator can take them. One heartbeat task tells the bus every
``progress_every`` seconds that each held job is still being worked on.

A job that fails — ffmpeg error, worker crash (even SIGKILL), a reply that is
not one, hang past the timeout — is handed back to the bus with exponential
backoff; after ``max_attempts`` it goes to ``dead.transcode.<stream>``
(``JobFailed``), is logged and counted, every rendition of that segment is
announced as a gap so the playlists move on, and a heal job for every rung is
published. Rungs a live job skips (backpressure, see
``segmenter.backpressure``) are announced as gaps, and a heal job for them is
published. A lane survives anything: an unexpected error settles the job it
held (retry with backoff, or dead letter) and the lane goes on; each lane runs
under a ``Supervisor``, which restarts it should it crash all the same.

Streaming jobs (LL-HLS, ``part_target``): the worker writes a line for every part
it stored before its reply; the lane publishes each as ``PartReady`` on
``segment.<stream>`` (not for heal jobs: the live edge is long past), so a
segment's parts go out before its ``SegmentReady``. The coordinator also listens
to the segmenter's part wake-ups (``part.<stream>``, core NATS) and passes the
ones for a job a lane holds to its worker, which would otherwise only find the
part on its next look in the store.

Heal jobs (``job.heal.<stream>``, group ``heal``) make the recording whole:
one extra lane per coordinator, whose worker runs at ``SCHED_IDLE``
(``worker --idle``), pulls one heal job at a time and only while a live lane
is idle (checked every ``heal_poll`` seconds), so heal work never delays live
work. A heal job has a long timeout; one that times out was starved of CPU,
not broken: it is put back on the bus afresh and does not count as an
attempt. Real failures count; after ``max_attempts`` a heal job goes to
``dead.heal.<stream>`` (no new gaps: its rungs are gaps already). Healed
renditions are announced as ``SegmentReady(heal=True)``, at the same keys a
live job would have used.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

from tidecast.bus.base import Bus, Delivery, Subscription, dead_subject
from tidecast.bus.consumer import consume
from tidecast.messages import (
    DeadLetter,
    JobFailed,
    MessageError,
    PartReady,
    SegmentReady,
    TranscodeJob,
    WorkerPart,
    WorkerReply,
    encode,
    excerpt,
)
from tidecast.metrics import REGISTRY, Registry
from tidecast.retry import Backoff
from tidecast.supervise import Factory, Supervisor
from tidecast.transcode.job import (
    check_outputs,
    heal_job,
    planned_rungs,
    rendition_prefix,
    skipped_rungs,
)
from tidecast.transcode.ladder import Rung

log = logging.getLogger("tidecast.transcode")

LIVE_PATTERN, LIVE_GROUP = "job.transcode.>", "transcode"
HEAL_PATTERN, HEAL_GROUP = "job.heal.>", "heal"
WAKE_PATTERN = "part.>"  # the segmenter's source part wake-ups (core, not durable)
MAX_WAKE_BUFFER = 64 << 10  # bytes of wake-ups a worker may have unread before more are dropped
POLL = 1.0  # seconds a free lane waits on the bus before it looks around again
MAX_NAK_DELAY = 60.0


def heal_subject(stream: str) -> str:
    return f"job.heal.{stream}"


class WorkerDied(RuntimeError):
    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class BadReply(RuntimeError):
    """The worker answered with a line that is not a reply (it was restarted)."""


@dataclass(slots=True)
class TranscodeStats:
    jobs_done: int = 0  # live jobs finished (encoded or reused)
    attempts_failed: int = 0
    retries: int = 0
    dead_lettered: int = 0
    worker_restarts: int = 0
    reused: int = 0  # jobs (live or heal) whose outputs an earlier attempt had stored
    duplicate_encodes: int = 0  # encoded although another attempt had stored the outputs
    heal_jobs_published: int = 0
    heal_jobs_done: int = 0
    heal_attempts_failed: int = 0
    heal_retries: int = 0
    heal_starved: int = 0
    heal_dead_lettered: int = 0
    lane_errors: int = 0  # unexpected errors a lane recovered from
    poison: int = 0  # messages on a job subject that were not a transcode job
    parts_published: int = 0
    part_publish_errors: int = 0
    wakeups: int = 0  # part wake-ups passed on to a worker
    job_seconds: list[float] = field(default_factory=list)


class WorkerProcess:
    """One ``tidecast.transcode.worker`` process, talking JSON lines over stdin/stdout."""

    def __init__(
        self, index: int, store_url: str, job_timeout: float, supervisor: Supervisor, *,
        idle: bool = False, command: Sequence[str] | None = None,
    ) -> None:  # fmt: skip
        self.index = index
        self.store_url = store_url
        self.job_timeout = job_timeout
        self.idle = idle
        self.command = tuple(command or (sys.executable, "-m", "tidecast.transcode.worker"))
        self.name = f"heal worker {index}" if idle else f"worker {index}"
        self.proc: asyncio.subprocess.Process | None = None
        self.current: TranscodeJob | None = None
        self._sup = supervisor
        self._stderr_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        await self.kill()  # reap the previous process and its stderr pump first
        args = [*self.command, "--store", self.store_url, "--timeout", str(self.job_timeout)]
        self.proc = await asyncio.create_subprocess_exec(
            *args, *(["--idle"] if self.idle else []),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=1 << 20,
        )  # fmt: skip
        self._stderr_task = self._sup.run(f"{self.name} stderr", self._pump_stderr(self.proc))
        log.info("%s started (pid %d)", self.name, self.proc.pid)

    async def _pump_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            log.info("%s: %s", self.name, line.decode(errors="replace").rstrip())

    async def run(
        self, job: TranscodeJob, timeout: float,
        on_part: Callable[[WorkerPart], Awaitable[None]] | None = None,
    ) -> WorkerReply:  # fmt: skip
        """The worker's reply to ``job``: WorkerDied if it died or hung (it is killed),
        BadReply if it answered something else (it is killed too). Part lines before
        the reply go to ``on_part``."""
        proc = self.proc
        if proc is None or proc.returncode is not None or not proc.stdin or not proc.stdout:
            raise WorkerDied(f"{self.name} is not running")
        self.current = job
        deadline = time.monotonic() + timeout + 10
        try:
            proc.stdin.write(json.dumps({"job": encode(job).decode()}).encode() + b"\n")
            await proc.stdin.drain()
            while True:
                line = await asyncio.wait_for(proc.stdout.readline(), max(0.0, deadline - time.monotonic()))
                try:
                    part = WorkerPart.from_line(line) if line.startswith(b'{"part"') else None
                except MessageError as exc:
                    await self.kill()
                    raise BadReply(f"{self.name} (pid {proc.pid}) announced {excerpt(line)!r}: {exc}") from None
                if part is None:
                    break
                if on_part is not None:
                    await on_part(part)
        except TimeoutError:
            await self.kill()
            raise WorkerDied(f"{self.name} did not answer within {timeout + 10:g} s",
                             timed_out=True) from None  # fmt: skip
        except (ConnectionError, BrokenPipeError) as exc:
            await self.kill()
            raise WorkerDied(f"{self.name} did not answer: {exc!r}") from exc
        except ValueError as exc:  # a line past the stream limit
            await self.kill()
            raise BadReply(f"{self.name} answered an oversized line: {exc}") from None
        finally:
            self.current = None
        if not line:
            try:
                rc = await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                await self.kill()
                rc = proc.returncode if proc.returncode is not None else -9
            raise WorkerDied(f"{self.name} (pid {proc.pid}) died with exit code {rc}")
        try:
            return WorkerReply.from_json(line)
        except MessageError as exc:
            await self.kill()
            raise BadReply(f"{self.name} (pid {proc.pid}) answered {excerpt(line)!r}: {exc}") from None

    def wake(self, msg: PartReady) -> bool:
        """Tell the worker a source part of the job in hand is stored; False if that is
        not its job (or its stdin is backed up: it polls the store anyway)."""
        job, proc = self.current, self.proc
        if job is None or proc is None or proc.stdin is None or proc.returncode is not None:
            return False
        if (msg.stream, msg.broadcast, msg.sequence, msg.part) != (job.stream, job.broadcast, job.sequence, job.part):
            return False
        transport = proc.stdin.transport
        if transport.is_closing() or transport.get_write_buffer_size() > MAX_WAKE_BUFFER:
            return False
        wake = {"stream": msg.stream, "broadcast": msg.broadcast, "sequence": msg.sequence,
                "index": msg.index, "final": msg.final}  # fmt: skip
        proc.stdin.write(json.dumps({"wake": wake}, separators=(",", ":")).encode() + b"\n")
        return True

    async def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                log.error("%s (pid %d) outlived SIGKILL by 10 s", self.name, proc.pid)
        task, self._stderr_task = self._stderr_task, None
        if task is not None:
            try:
                await asyncio.wait_for(task, 5)  # ends at EOF; a deadline all the same
            except (TimeoutError, asyncio.CancelledError):
                log.warning("%s: its stderr did not close", self.name)

    async def aclose(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None and proc.stdin:
            proc.stdin.close()  # a clean end: the worker exits after its current job
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                log.warning("%s did not exit; killing it", self.name)
        await self.kill()


@dataclass(slots=True, eq=False)
class Lane:
    """One worker and the job it holds (at most one)."""

    name: str
    worker: WorkerProcess
    heal: bool = False
    delivery: Delivery | None = None
    job: TranscodeJob | None = None
    restart_delays: Iterator[float] | None = None  # while its worker cannot be started


class TranscodeCoordinator:
    def __init__(
        self, bus: Bus, store_url: str, *, workers: int = 0, max_attempts: int = 3,
        backoff: float = 0.5, job_timeout: float = 120.0, progress_every: float = 5.0,
        heal: bool = True, heal_timeout: float | None = None, heal_poll: float = 0.5,
        worker_command: Sequence[str] | None = None, registry: Registry = REGISTRY,
    ) -> None:  # fmt: skip
        self.bus = bus
        self.store_url = store_url
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.job_timeout = job_timeout
        self.progress_every = progress_every  # well inside the bus's ack wait
        # a heal worker only gets idle CPU: give it time, starvation is not failure
        self.heal_timeout = heal_timeout if heal_timeout is not None else max(600.0, 10 * job_timeout)
        self.heal_poll = heal_poll
        self.stats = TranscodeStats()
        self._sup = Supervisor("transcode", registry=registry)
        self.workers = [
            WorkerProcess(i, store_url, job_timeout, self._sup, command=worker_command)
            for i in range(workers or os.cpu_count() or 1)
        ]
        self.heal_worker = (
            WorkerProcess(len(self.workers), store_url, self.heal_timeout, self._sup, idle=True,
                          command=worker_command) if heal else None
        )  # fmt: skip
        self._live = [Lane(f"transcode-lane-{w.index}", w) for w in self.workers]
        self._heal_lane = (
            Lane("transcode-heal-lane", self.heal_worker, heal=True) if self.heal_worker else None
        )
        self._sub: Subscription | None = None
        self._heal_sub: Subscription | None = None
        self._wake_sub: Subscription | None = None
        # the last segment duration each broadcast's jobs reported: a gap's estimate for a
        # job that failed before its segment was complete (published with duration 0)
        self._durations: dict[tuple[str, str], float] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closing = False
        self._restart_backoff = Backoff(initial=0.5, maximum=30.0)
        self._jobs_total = registry.counter(
            "tidecast_transcode_jobs_total", "Live transcode jobs by outcome "
            "(encoded, reused, failed, retried, dead_lettered).", ("outcome",))  # fmt: skip
        self._heal_total = registry.counter(
            "tidecast_transcode_heal_jobs_total", "Heal jobs by outcome (published, encoded, "
            "reused, failed, retried, starved, dead_lettered).", ("outcome",))  # fmt: skip
        self._duplicates = registry.counter(
            "tidecast_transcode_duplicate_encodes_total",
            "Jobs encoded although another attempt had already stored their outputs.")
        self._busy = registry.gauge(
            "tidecast_transcode_busy_lanes", "Worker lanes holding a job.", ("kind",))
        self._lane_errors = registry.counter(
            "tidecast_transcode_lane_errors_total",
            "Unexpected errors a transcode lane recovered from (the job was settled).")

    # -- lifecycle -----------------------------------------------------------
    async def start(self) -> None:
        for lane in self._lanes():
            await self._ensure_worker(lane, wait=False)  # a lane retries a failed start
        self._sub = self.bus.subscribe(LIVE_PATTERN, group=LIVE_GROUP)
        if self._heal_lane is not None:
            self._heal_sub = self.bus.subscribe(HEAL_PATTERN, group=HEAL_GROUP)
        wake_sub = self._wake_sub = self.bus.subscribe(WAKE_PATTERN)
        self._spawn("transcode-wakeups", lambda: consume(wake_sub, self._on_wake, bus=self.bus,
                                                         name="transcode-wakeups"), "transcode-wakeups")  # fmt: skip
        for lane in self._live:
            self._spawn(lane.name, functools.partial(self._live_loop, lane), "transcode-lane")
        if self._heal_lane is not None:
            hl = self._heal_lane
            self._spawn(hl.name, functools.partial(self._heal_loop, hl), "transcode-heal-lane")
        self._spawn("transcode-heartbeat", self._heartbeat, "transcode-heartbeat")

    def _spawn(self, name: str, factory: Factory, kind: str) -> None:
        self._tasks[name] = self._sup.spawn(name, factory, kind=kind)

    def _lanes(self) -> list[Lane]:
        return [*self._live, *([self._heal_lane] if self._heal_lane else [])]

    def held(self) -> int:
        """Jobs the live lanes hold, unacknowledged (never more than there are lanes)."""
        return sum(1 for lane in self._live if lane.delivery is not None)

    def busy(self) -> bool:
        """Live work held or queued (heal work is durable on the bus and waits)."""
        return bool(
            any(lane.delivery is not None for lane in self._live)
            or (self._sub is not None and self._sub.pending())
        )  # fmt: skip

    async def aclose(self, drain_timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        while self.busy() and loop.time() < deadline:  # noqa: ASYNC110 (bounded shutdown drain)
            await asyncio.sleep(0.05)
        self._closing = True
        for sub in (self._sub, self._heal_sub, self._wake_sub):
            if sub is not None:
                await sub.aclose()
        # free lanes end at once (their pull returns None); a busy one is cancelled and
        # hands its job back to the bus
        lane_tasks = [t for name, t in self._tasks.items()
                      if name not in ("transcode-heartbeat", "transcode-wakeups")]  # fmt: skip
        if lane_tasks:
            await asyncio.wait(lane_tasks, timeout=POLL + 1)
        for name in list(self._tasks):
            await self._sup.stop(name)
        for w in [*self.workers, *([self.heal_worker] if self.heal_worker else [])]:
            await w.aclose()
        await self._sup.aclose()

    # -- lanes ---------------------------------------------------------------
    async def _ensure_worker(self, lane: Lane, *, wait: bool = True) -> bool:
        """Start the lane's worker if it is not running; False (after a backoff, with
        ``wait``) if it cannot be started now."""
        if lane.worker.alive:
            return True
        try:
            await lane.worker.start()
        except Exception:  # noqa: BLE001 - e.g. the executable is gone: retried with backoff
            if lane.restart_delays is None:
                lane.restart_delays = self._restart_backoff.delays()
            delay = next(lane.restart_delays)
            log.exception("%s could not be started; trying again in %.1f s", lane.worker.name, delay)
            if wait:
                await asyncio.sleep(delay)
            return False
        lane.restart_delays = None
        return True

    async def _pull(self, sub: Subscription, timeout: float) -> Delivery | None:
        t0 = time.monotonic()
        delivery = await sub.next(timeout)
        if delivery is None and time.monotonic() - t0 < timeout / 10 and not self._closing:
            await asyncio.sleep(timeout / 10)  # a pull that returns at once must not spin
        return delivery

    async def _live_loop(self, lane: Lane) -> None:
        while not self._closing:
            if not await self._ensure_worker(lane):
                continue
            assert self._sub is not None
            delivery = await self._pull(self._sub, POLL)  # one job, now that the lane is free
            if delivery is not None:
                await self._hold(lane, delivery)

    async def _heal_loop(self, lane: Lane) -> None:
        while not self._closing:
            if not any(live.delivery is None for live in self._live):
                await asyncio.sleep(self.heal_poll)  # every live lane is busy: heal waits
                continue
            if not await self._ensure_worker(lane):
                continue
            assert self._heal_sub is not None
            delivery = await self._pull(self._heal_sub, self.heal_poll)
            if delivery is not None:
                await self._hold(lane, delivery)

    async def _hold(self, lane: Lane, delivery: Delivery) -> None:
        """Serve one delivery; whatever happens, it is settled and the lane goes on."""
        lane.delivery = delivery
        kind = "heal" if lane.heal else "live"
        self._busy.inc(kind=kind)
        try:
            await self._serve(lane, delivery)
        except asyncio.CancelledError:
            await self._release(delivery, 0.0)  # shutdown: hand the job back now
            raise
        except Exception as exc:
            self.stats.lane_errors += 1
            self._lane_errors.inc()
            log.exception("%s: unexpected error on %s; the lane goes on", lane.name, delivery.subject)
            await self._recover(lane, delivery, exc)
        finally:
            lane.delivery = None
            lane.job = None
            self._busy.inc(-1, kind=kind)

    async def _release(self, delivery: Delivery, delay: float) -> None:
        try:
            await asyncio.wait_for(delivery.nak(delay), 5)
        except Exception as exc:  # noqa: BLE001 - the bus redelivers after its ack wait anyway
            log.warning("%s: could not hand the job back (%r); it comes back after the "
                        "bus's ack wait", delivery.subject, exc)  # fmt: skip

    async def _recover(self, lane: Lane, delivery: Delivery, exc: Exception) -> None:
        if delivery.settled:
            return
        job = delivery.message
        try:
            if isinstance(job, TranscodeJob):
                await self._failed(lane, delivery, job, f"{type(exc).__name__}: {exc}", False)
        except Exception:  # noqa: BLE001 - logged; the job is handed back below
            log.exception("%s: could not settle the job after an error", lane.name)
        if not delivery.settled:
            await self._release(delivery, self.backoff)

    async def _serve(self, lane: Lane, delivery: Delivery) -> None:
        job = delivery.message
        if not isinstance(job, TranscodeJob):
            await self._poison(delivery, f"not a transcode job: {job.kind}")
            return
        if lane.heal and not job.heal:
            job = dataclasses.replace(job, heal=True)
        lane.job = job
        timeout = self.heal_timeout if lane.heal else self.job_timeout
        t0 = time.monotonic()
        on_part = None if job.heal else functools.partial(self._publish_part, job)
        try:
            reply = await lane.worker.run(job, timeout, on_part)
        except (WorkerDied, BadReply) as exc:
            self.stats.worker_restarts += 1
            log.warning("%s#%d: %s; restarting it", job.stream, job.sequence, exc)
            starved = lane.heal and isinstance(exc, WorkerDied) and exc.timed_out
            await self._failed(lane, delivery, job, str(exc), False, starved=starved)
            return  # the lane starts a new worker before it pulls again
        elapsed = time.monotonic() - t0
        if reply.ok:
            why = check_outputs(job, reply.outputs)
            if not why:
                await self._done(lane, delivery, job, reply, elapsed)
                return
            reply = WorkerReply(ok=False, error=f"{lane.worker.name} replied with bad outputs: {why}")
        starved = lane.heal and elapsed >= timeout  # the worker killed an ffmpeg that got no CPU
        await self._failed(lane, delivery, job, reply.error, reply.permanent, starved=starved)

    async def _poison(self, delivery: Delivery, reason: str) -> None:
        self.stats.poison += 1
        log.error("%s: %s: %s", delivery.subject, reason, excerpt(delivery.data))
        letter = DeadLetter.of(delivery.subject, delivery.data, reason, "transcode", time.time())
        await self.bus.publish(dead_subject(delivery.subject), letter)
        await delivery.term()

    async def _publish_part(self, job: TranscodeJob, p: WorkerPart) -> None:
        """A part a worker stored: on the bus, in order with the job's segments."""
        if p.rendition not in {r.name for r in planned_rungs(job)}:
            log.warning("%s#%d: a part of %r, not a rung of the job; ignored", job.stream, job.sequence, p.rendition)
            return
        msg = PartReady(
            stream=job.stream, broadcast=job.broadcast, rendition=p.rendition, sequence=job.sequence,
            index=p.index, start=p.start, duration=p.duration, key=p.key, init_key=p.init_key,
            size=p.size, independent=p.independent, final=p.final, produced_at=time.time(),
            part=job.part,
        )  # fmt: skip
        try:
            await self.bus.publish(f"segment.{job.stream}", msg)
        except Exception as exc:  # noqa: BLE001 - a lost part: the segment still comes whole
            self.stats.part_publish_errors += 1
            log.warning("%s#%d: could not publish part %d of %s: %r", job.stream, job.sequence,
                        p.index, p.rendition, exc)  # fmt: skip
            return
        self.stats.parts_published += 1

    async def _on_wake(self, delivery: Delivery) -> None:
        msg = delivery.message
        if not isinstance(msg, PartReady):
            return
        for lane in self._lanes():
            if lane.worker.wake(msg):
                self.stats.wakeups += 1

    async def _heartbeat(self) -> None:
        """Tell the bus every held job is alive, so only a dead worker's job is handed on."""
        while True:
            await asyncio.sleep(self.progress_every)
            for lane in self._lanes():
                d = lane.delivery
                if d is None or d.settled:
                    continue
                try:
                    await asyncio.wait_for(d.in_progress(), self.progress_every)
                except Exception as exc:  # noqa: BLE001 - a missed beat only risks a duplicate job
                    log.warning("%s: could not extend the job's ack wait: %r", d.subject, exc)

    # -- outcomes --------------------------------------------------------------
    async def _done(
        self, lane: Lane, delivery: Delivery, job: TranscodeJob, reply: WorkerReply, elapsed: float
    ) -> None:
        outcome = "reused" if reply.reused else "encoded"
        if reply.reused:
            self.stats.reused += 1
            log.info("%s#%d: outputs already stored by an earlier attempt; reused",
                     job.stream, job.sequence)  # fmt: skip
        if reply.duplicate:
            self.stats.duplicate_encodes += 1
            self._duplicates.inc()
            log.warning("%s#%d was encoded twice (another attempt finished first)",
                        job.stream, job.sequence)  # fmt: skip
        await self._announce(job, reply)
        await delivery.ack()
        if job.heal:
            self.stats.heal_jobs_done += 1
            self._heal_total.inc(outcome=outcome)
        else:
            self.stats.jobs_done += 1
            self._jobs_total.inc(outcome=outcome)
            self.stats.job_seconds.append(elapsed)
            del self.stats.job_seconds[:-1000]

    async def _announce(self, job: TranscodeJob, reply: WorkerReply) -> None:
        """The renditions a job made; for a live job also its skipped rungs as gaps, and a
        heal job for them."""
        names = _renditions(job)
        now = time.time()
        if reply.duration > 0:  # a streaming job: what its segment turned out to be
            job = dataclasses.replace(job, start=reply.start or job.start, duration=reply.duration,
                                      frame_rate=reply.frame_rate or job.frame_rate)  # fmt: skip
            self._durations[(job.stream, job.broadcast)] = reply.duration
            while len(self._durations) > 1000:
                del self._durations[next(iter(self._durations))]
        for o in reply.outputs:
            await self.bus.publish(
                f"segment.{job.stream}",
                SegmentReady(
                    stream=job.stream, broadcast=job.broadcast, rendition=o.rendition,
                    sequence=job.sequence, start=job.start, duration=job.duration,
                    init_key=o.init_key, segment_key=o.segment_key, size=o.size,
                    has_audio=bool(job.audio_codec), codecs=o.codecs, width=o.width,
                    height=o.height, frame_rate=job.frame_rate,
                    first_frame_arrival=job.first_frame_arrival, stored_at=now,
                    timings={"source_stored": job.stored_at, "encoded": now},
                    renditions=names, part=job.part, heal=job.heal,
                ),
            )  # fmt: skip
        if job.heal:
            return
        skipped = skipped_rungs(job)  # skipped for backpressure
        await self._announce_gaps(job, skipped)
        await self._publish_heal(job, skipped)

    async def _announce_gaps(self, job: TranscodeJob, rungs: tuple[Rung, ...]) -> None:
        """Segments that were not made: listed as EXT-X-GAP, at the same sequence number."""
        names = _renditions(job)
        if job.duration <= 0:  # published before its segment was complete: estimate
            job = dataclasses.replace(job, duration=self._durations.get((job.stream, job.broadcast), 2.0))
        for r in rungs:
            prefix = rendition_prefix(job, r.name)
            await self.bus.publish(
                f"segment.{job.stream}",
                SegmentReady(
                    stream=job.stream, broadcast=job.broadcast, rendition=r.name,
                    sequence=job.sequence, start=job.start, duration=job.duration,
                    init_key="", segment_key=f"{prefix}/{job.sequence:06d}.m4s", size=0,
                    first_frame_arrival=job.first_frame_arrival, renditions=names, gap=True,
                    part=job.part,
                ),
            )  # fmt: skip

    async def _publish_heal(self, job: TranscodeJob, rungs: tuple[Rung, ...]) -> None:
        if not rungs:
            return
        await self.bus.publish(heal_subject(job.stream), heal_job(job, [r.name for r in rungs]))
        self.stats.heal_jobs_published += 1
        self._heal_total.inc(outcome="published")
        log.info("%s#%d: heal job published for %s", job.stream, job.sequence,
                 ", ".join(r.name for r in rungs))  # fmt: skip

    async def _failed(
        self, lane: Lane, delivery: Delivery, job: TranscodeJob, error: str, permanent: bool,
        *, starved: bool = False,
    ) -> None:  # fmt: skip
        what = f"{job.stream}#{job.sequence}" + (" heal" if job.heal else "")
        if job.heal and starved:
            # no CPU to spare for it: not the job's fault, and no attempt used up
            self.stats.heal_starved += 1
            self._heal_total.inc(outcome="starved")
            log.warning("%s got no CPU for %.0f s; back on the queue: %s",
                        what, self.heal_timeout, error.splitlines()[0] if error else "")  # fmt: skip
            await self.bus.publish(heal_subject(job.stream), job)  # afresh: attempt 1 again
            await delivery.ack()
            return
        counter = self._heal_total if job.heal else self._jobs_total
        counter.inc(outcome="failed")
        if job.heal:
            self.stats.heal_attempts_failed += 1
        else:
            self.stats.attempts_failed += 1
        attempt = delivery.attempt
        if not permanent and attempt < self.max_attempts:
            delay = min(self.backoff * 2 ** (attempt - 1), MAX_NAK_DELAY)
            counter.inc(outcome="retried")
            if job.heal:
                self.stats.heal_retries += 1
            else:
                self.stats.retries += 1
            log.warning("%s failed (attempt %d/%d), retrying in %.1f s: %s",
                        what, attempt, self.max_attempts, delay, error)  # fmt: skip
            await delivery.nak(delay)
            return
        counter.inc(outcome="dead_lettered")
        log.error("%s dead-lettered after %d attempts: %s", what, attempt, error)
        failed = JobFailed(job=_body(job), attempts=attempt, error=error[-2000:], failed_at=time.time())
        if job.heal:
            self.stats.heal_dead_lettered += 1
            await self.bus.publish(f"dead.heal.{job.stream}", failed)  # its rungs are gaps already
        else:
            self.stats.dead_lettered += 1
            await self.bus.publish(f"dead.transcode.{job.stream}", failed)
            await self._announce_gaps(job, planned_rungs(job))
            await self._publish_heal(job, planned_rungs(job))
        await delivery.ack()

    def snapshot(self) -> dict[str, object]:
        js = sorted(self.stats.job_seconds)
        s = self.stats

        def lane_info(lane: Lane) -> dict[str, object]:
            j = lane.job
            return {"index": lane.worker.index, "pid": lane.worker.pid,
                    "job": f"{j.stream}#{j.sequence}" if j else None}  # fmt: skip

        return {
            "workers": [lane_info(lane) for lane in self._live],
            "heal_worker": lane_info(self._heal_lane) if self._heal_lane else None,
            "jobs_done": s.jobs_done,
            "attempts_failed": s.attempts_failed,
            "retries": s.retries,
            "dead_lettered": s.dead_lettered,
            "worker_restarts": s.worker_restarts,
            "job_seconds_p50": js[len(js) // 2] if js else None,
            "job_seconds_mean": sum(js) / len(js) if js else None,
            "duplicate_encodes": s.duplicate_encodes,
            "reused": s.reused,
            "heal_jobs_published": s.heal_jobs_published,
            "heal_jobs_done": s.heal_jobs_done,
            "heal_retries": s.heal_retries,
            "heal_starved": s.heal_starved,
            "heal_dead_lettered": s.heal_dead_lettered,
            "lane_errors": s.lane_errors,
            "parts_published": s.parts_published,
            "wakeups": s.wakeups,
        }


def _body(job: TranscodeJob) -> dict[str, object]:
    return dataclasses.asdict(job)


def _renditions(job: TranscodeJob) -> tuple[str, ...]:
    """Every rendition made from the job's source segment (skipped rungs included)."""
    if job.renditions:
        return job.renditions
    return tuple(r.name for r in planned_rungs(job)) + (("audio",) if job.audio_codec else ())
