"""TranscodeCoordinator: a pool of worker processes fed from the bus.

Jobs arrive on ``job.transcode.<stream>`` (queue group ``transcode``: with
several coordinators, each job goes to one). Every worker process runs one
job at a time. A job that fails — ffmpeg error, worker crash (even SIGKILL),
hang past the timeout — is handed back to the bus with exponential backoff;
after ``max_attempts`` it goes to the dead-letter subject
``dead.transcode.<stream>``, is logged as an error and counted, and every
rendition of that segment is announced as a gap so the playlists move on.
Rungs a job skips (backpressure, see ``segmenter.backpressure``) are announced
as gaps along with the rungs it encoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field

from tidecast.bus.base import Bus, Delivery, Subscription
from tidecast.messages import JobFailed, SegmentReady, TranscodeJob, encode
from tidecast.transcode.job import planned_rungs, rendition_prefix, skipped_rungs
from tidecast.transcode.ladder import Rung

log = logging.getLogger("tidecast.transcode")


class WorkerDied(RuntimeError):
    pass


@dataclass(slots=True)
class TranscodeStats:
    jobs_done: int = 0
    attempts_failed: int = 0
    retries: int = 0
    dead_lettered: int = 0
    worker_restarts: int = 0
    job_seconds: list[float] = field(default_factory=list)


class WorkerProcess:
    def __init__(self, index: int, store_url: str, job_timeout: float) -> None:
        self.index = index
        self.store_url = store_url
        self.job_timeout = job_timeout
        self.proc: asyncio.subprocess.Process | None = None
        self.current: TranscodeJob | None = None
        self._stderr_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tidecast.transcode.worker",
            "--store", self.store_url, "--timeout", str(self.job_timeout),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=1 << 20,
        )  # fmt: skip
        self._stderr_task = asyncio.create_task(self._pump_stderr(self.proc))
        log.info("worker %d started (pid %d)", self.index, self.proc.pid)

    async def _pump_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            log.info("worker %d: %s", self.index, line.decode(errors="replace").rstrip())

    async def run(self, job: TranscodeJob) -> dict[str, object]:
        if self.proc is None or self.proc.returncode is not None:
            await self.start()
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.current = job
        try:
            self.proc.stdin.write(json.dumps({"job": encode(job).decode()}).encode() + b"\n")
            await self.proc.stdin.drain()
            line = await asyncio.wait_for(self.proc.stdout.readline(), self.job_timeout + 10)
        except (TimeoutError, ConnectionError, BrokenPipeError) as exc:
            await self.kill()
            raise WorkerDied(f"worker {self.index} did not answer: {exc!r}") from exc
        finally:
            self.current = None
        if not line:
            rc = await self.proc.wait()
            raise WorkerDied(f"worker {self.index} (pid {self.proc.pid}) died with exit code {rc}")
        reply: dict[str, object] = json.loads(line)
        return reply

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        if self._stderr_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._stderr_task

    async def aclose(self) -> None:
        if self.proc is not None and self.proc.returncode is None and self.proc.stdin:
            self.proc.stdin.close()  # a clean end: the worker exits after its current job
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                log.warning("worker %d did not exit; killing it", self.index)
        await self.kill()


class TranscodeCoordinator:
    def __init__(
        self, bus: Bus, store_url: str, *, workers: int = 0, max_attempts: int = 3,
        backoff: float = 0.5, job_timeout: float = 120.0, progress_every: float = 5.0,
    ) -> None:  # fmt: skip
        self.bus = bus
        self.store_url = store_url
        self.workers = [
            WorkerProcess(i, store_url, job_timeout) for i in range(workers or os.cpu_count() or 1)
        ]
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.progress_every = progress_every  # well inside the bus's ack wait
        self.stats = TranscodeStats()
        self._queue: asyncio.Queue[Delivery | None] = asyncio.Queue()
        self._sub: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for w in self.workers:
            await w.start()
        self._sub = self.bus.subscribe("job.transcode.>", group="transcode")
        self._tasks.append(
            asyncio.create_task(self._dispatch(self._sub), name="transcode-dispatch")
        )
        for w in self.workers:
            self._tasks.append(
                asyncio.create_task(self._work(w), name=f"transcode-worker-{w.index}")
            )

    def busy(self) -> bool:
        return bool(
            self._queue.qsize() or any(w.current for w in self.workers)
            or (self._sub is not None and self._sub.pending())
        )  # fmt: skip

    async def aclose(self, drain_timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        while self.busy() and loop.time() < deadline:  # noqa: ASYNC110 (bounded shutdown drain)
            await asyncio.sleep(0.05)
        if self._sub is not None:
            await self._sub.aclose()
        for _ in self.workers:
            self._queue.put_nowait(None)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for w in self.workers:
            await w.aclose()

    async def _dispatch(self, sub: Subscription) -> None:
        async for delivery in sub:
            self._queue.put_nowait(delivery)

    async def _work(self, worker: WorkerProcess) -> None:
        while (delivery := await self._queue.get()) is not None:
            job = delivery.message
            if not isinstance(job, TranscodeJob):
                log.error("unexpected message on %s: %s", delivery.subject, job.kind)
                await delivery.ack()
                continue
            t0 = time.monotonic()
            beat = asyncio.create_task(self._heartbeat(delivery), name="transcode-heartbeat")
            try:
                reply = await worker.run(job)
            except WorkerDied as exc:
                self.stats.worker_restarts += 1
                log.warning("%s#%d: %s; restarting it", job.stream, job.sequence, exc)
                await worker.start()
                await self._failed(delivery, job, str(exc), permanent=False)
                continue
            finally:
                beat.cancel()
            if reply.get("ok"):
                self.stats.jobs_done += 1
                self.stats.job_seconds.append(time.monotonic() - t0)
                del self.stats.job_seconds[:-1000]
                await self._announce(job, reply)
                await delivery.ack()
            else:
                await self._failed(
                    delivery, job, str(reply.get("error")), bool(reply.get("permanent"))
                )

    async def _heartbeat(self, delivery: Delivery) -> None:
        """Tell the bus the job is alive, so only a dead worker's job is handed on."""
        while True:
            await asyncio.sleep(self.progress_every)
            try:
                await delivery.in_progress()
            except Exception as exc:  # noqa: BLE001 - a missed beat only risks a duplicate job
                log.warning("%s: could not extend the job's ack wait: %r", delivery.subject, exc)

    async def _announce(self, job: TranscodeJob, reply: dict[str, object]) -> None:
        outputs = reply["outputs"]
        assert isinstance(outputs, list)
        names = _renditions(job)
        now = time.time()
        for o in outputs:
            await self.bus.publish(
                f"segment.{job.stream}",
                SegmentReady(
                    stream=job.stream, broadcast=job.broadcast, rendition=o["rendition"],
                    sequence=job.sequence, start=job.start, duration=job.duration,
                    init_key=o["init_key"], segment_key=o["segment_key"], size=o["size"],
                    has_audio=bool(job.audio_codec), codecs=o["codecs"], width=o["width"],
                    height=o["height"], frame_rate=job.frame_rate,
                    first_frame_arrival=job.first_frame_arrival, stored_at=now,
                    timings={"source_stored": job.stored_at, "encoded": now},
                    renditions=names, part=job.part,
                ),
            )  # fmt: skip
        await self._announce_gaps(job, skipped_rungs(job))  # skipped for backpressure

    async def _announce_gaps(self, job: TranscodeJob, rungs: tuple[Rung, ...]) -> None:
        """Segments that were not made: listed as EXT-X-GAP, at the same sequence number."""
        names = _renditions(job)
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

    async def _failed(
        self, delivery: Delivery, job: TranscodeJob, error: str, permanent: bool
    ) -> None:
        self.stats.attempts_failed += 1
        attempt = delivery.attempt
        if not permanent and attempt < self.max_attempts:
            delay = self.backoff * 2 ** (attempt - 1)
            self.stats.retries += 1
            log.warning("%s#%d failed (attempt %d/%d), retrying in %.1f s: %s",
                        job.stream, job.sequence, attempt, self.max_attempts, delay, error)  # fmt: skip
            await delivery.nak(delay)
            return
        self.stats.dead_lettered += 1
        log.error(
            "%s#%d dead-lettered after %d attempts: %s", job.stream, job.sequence, attempt, error
        )
        await self.bus.publish(
            f"dead.transcode.{job.stream}",
            JobFailed(job=json.loads(encode(job))["body"], attempts=attempt, error=error[-2000:],
                      failed_at=time.time()),
        )  # fmt: skip
        await self._announce_gaps(job, planned_rungs(job))
        await delivery.ack()

    def snapshot(self) -> dict[str, object]:
        js = sorted(self.stats.job_seconds)
        return {
            "workers": [
                {
                    "index": w.index,
                    "pid": w.pid,
                    "job": f"{w.current.stream}#{w.current.sequence}" if w.current else None,
                }
                for w in self.workers
            ],  # fmt: skip
            "jobs_done": self.stats.jobs_done,
            "attempts_failed": self.stats.attempts_failed,
            "retries": self.stats.retries,
            "dead_lettered": self.stats.dead_lettered,
            "worker_restarts": self.stats.worker_restarts,
            "job_seconds_p50": js[len(js) // 2] if js else None,
            "job_seconds_mean": sum(js) / len(js) if js else None,
        }


def _renditions(job: TranscodeJob) -> tuple[str, ...]:
    """Every rendition made from the job's source segment (skipped rungs included)."""
    return tuple(r.name for r in planned_rungs(job)) + (("audio",) if job.audio_codec else ())
