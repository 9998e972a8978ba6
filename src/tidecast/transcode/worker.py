"""A transcode worker process: ``python -m tidecast.transcode.worker --store URL``.

Reads one JSON request per line on stdin ({"job": <bus wire form>}), runs it,
answers one line on stdout: a ``messages.WorkerReply`` (``to_json``). Stateless:
any worker can take any job, and a worker that dies mid-job costs one retry,
because outputs have deterministic keys (and a finished job's outputs record
lets a redelivered one skip the encode).

A streaming job (``part_target``, see ``transcode.stream``) also gets wake-up lines
on stdin while it runs ({"wake": {"stream", "broadcast", "sequence", "index",
"final"}}: a source part is stored), and writes a line for every part it stored
({"part": ...}, a ``messages.WorkerPart``) before its reply.

``--idle`` makes the worker (and so every ffmpeg it starts, which inherits it)
run at ``SCHED_IDLE``: it only gets CPU time nothing else wants. Heal jobs run
in such a worker. Where SCHED_IDLE is refused, it falls back to ``nice 19``.

Fault injection for tests comes from the environment (SEQ is a sequence number):

- ``TIDECAST_FAULT_DELAY="SEQ:SECONDS"``: wait before the job (once per process);
- ``TIDECAST_FAULT_STALL="SEQ:SECONDS"``: pause after the encode, before the
  outputs record is looked at again (once per process);
- ``TIDECAST_FAULT_FAIL="SEQ"``: fail that job, always;
- ``TIDECAST_FAULT_REPLY="SEQ:TEXT"``: answer the line TEXT instead of a reply;
- ``TIDECAST_FAULT_EXIT="SEQ"``: exit (code 3) on that job.

These target live jobs; ``TIDECAST_FAULT_HEAL_<NAME>`` (``TIDECAST_FAULT_HEAL_FAIL``...)
is the same fault on heal jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from tidecast import ffmpeg
from tidecast.messages import MessageError, TranscodeJob, WorkerPart, WorkerReply, decode
from tidecast.store.base import Store
from tidecast.store.factory import StoreRetry, open_store
from tidecast.transcode.job import JobError, run_job
from tidecast.transcode.stream import Wakeups, run_stream_job

log = logging.getLogger("tidecast.worker")


def _faulty(job: TranscodeJob, name: str) -> str | None:
    """The argument of fault ``name`` (after ``SEQ:``) if it targets this job, else None."""
    spec = os.environ.get(f"TIDECAST_FAULT_{'HEAL_' if job.heal else ''}{name}", "")
    seq, _, arg = spec.partition(":")
    return arg if seq.strip().isdigit() and int(seq) == job.sequence else None


def lower_priority() -> str:
    """Run at SCHED_IDLE (children inherit it), or nice 19 where that is refused."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (OSError, AttributeError) as exc:
        os.nice(19 - os.nice(0))
        return f"nice 19 (SCHED_IDLE refused: {exc!r})"


def _write_line(text: str) -> None:
    sys.stdout.write(text.replace("\n", " ") + "\n")
    sys.stdout.flush()


async def _emit(part: WorkerPart) -> None:
    _write_line(part.to_json())


class Current:
    """The job in hand and its wake-ups (the stdin reader wakes it)."""

    def __init__(self) -> None:
        self.job: TranscodeJob | None = None
        self.wakeups = Wakeups()

    def wake(self, raw: object) -> None:
        job = self.job
        if job is None or not isinstance(raw, dict):
            return
        if (raw.get("stream"), raw.get("broadcast"), raw.get("sequence")) != (job.stream, job.broadcast, job.sequence):
            return
        index, final = raw.get("index"), raw.get("final")
        if isinstance(index, int) and isinstance(final, bool):
            self.wakeups.wake(index, final)


async def handle(
    line: str, store: Store, exe: str, timeout: float, delayed: set[object],
    current: Current | None = None,
) -> str:  # fmt: skip
    """One request line in, one reply line out (part lines written on the way)."""
    try:
        job = decode(line.encode())
    except MessageError as exc:
        return WorkerReply(ok=False, error=f"bad request: {exc}", permanent=True).to_json()
    if not isinstance(job, TranscodeJob):
        return WorkerReply(ok=False, error=f"not a transcode job: {job.kind}", permanent=True).to_json()
    delay = _faulty(job, "DELAY")
    if delay is not None and job.sequence not in delayed:
        delayed.add(job.sequence)
        await asyncio.sleep(float(delay))
    if _faulty(job, "EXIT") is not None:
        log.warning("injected exit on segment %d", job.sequence)
        os._exit(3)
    garbage = _faulty(job, "REPLY")
    if garbage is not None:
        return garbage
    if _faulty(job, "FAIL") is not None:
        return WorkerReply(ok=False, error=f"injected failure for segment {job.sequence}").to_json()
    stall = _faulty(job, "STALL")

    async def after_encode() -> None:
        if stall is not None and ("stall", job.sequence) not in delayed:
            delayed.add(("stall", job.sequence))
            await asyncio.sleep(float(stall))

    try:
        if job.part_target > 0:
            current = current or Current()
            current.job, current.wakeups = job, Wakeups()
            try:
                reply = await run_stream_job(job, store, exe=exe, timeout=timeout, emit=_emit,
                                             wakeups=current.wakeups)  # fmt: skip
            finally:
                current.job = None
            await after_encode()
        else:
            reply = await run_job(job, store, exe=exe, timeout=timeout, after_encode=after_encode)
    except JobError as exc:
        return WorkerReply(ok=False, error=str(exc)).to_json()
    except Exception as exc:  # noqa: BLE001 - a store error, say: report it, stay up for the next job
        log.exception("%s#%d failed", job.stream, job.sequence)
        return WorkerReply(ok=False, error=f"{type(exc).__name__}: {exc}").to_json()
    return reply.to_json()


def request_body(line: bytes) -> str:
    """The job's wire form out of one request line ({"job": "..."})."""
    raw = json.loads(line)
    if not isinstance(raw, dict) or not isinstance(raw.get("job"), str):
        raise ValueError('a request is {"job": <wire form>}')
    return str(raw["job"])


STORE_DEADLINE = 30.0  # s each store operation of a job retries transient errors


async def serve(store_url: str, timeout: float) -> None:
    # a store that is away for a while delays the job instead of failing it
    store = open_store(store_url, Path("."), retry=StoreRetry(deadline=STORE_DEADLINE))
    exe = ffmpeg.ffmpeg_exe()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    delayed: set[object] = set()
    current = Current()
    # requests wait here while a job runs; the coordinator sends one at a time
    requests: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=4)

    async def read_stdin() -> None:
        """Requests to the queue; wake-ups straight to the job in hand (never queued)."""
        try:
            while line := await reader.readline():
                try:
                    raw = json.loads(line)
                except ValueError:
                    raw = None
                if isinstance(raw, dict) and "wake" in raw:
                    current.wake(raw["wake"])
                    continue
                await requests.put(line)
        finally:
            await requests.put(None)

    stdin_task = asyncio.create_task(read_stdin())
    try:
        while (line := await requests.get()) is not None:
            try:
                body = request_body(line)
            except ValueError as exc:
                out = WorkerReply(ok=False, error=f"bad request: {exc}", permanent=True).to_json()
            else:
                out = await handle(body, store, exe, timeout, delayed, current)
            _write_line(out)
    finally:
        stdin_task.cancel()


def main() -> int:
    parser = argparse.ArgumentParser(
        description="tidecast transcode worker (stdin/stdout JSON lines)"
    )
    parser.add_argument(
        "--store", required=True, help="media store URL (file:///dir or s3://bucket/prefix)"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds before a hung ffmpeg is killed"
    )
    parser.add_argument(
        "--idle", action="store_true",
        help="run at the lowest CPU priority (SCHED_IDLE, else nice 19): for heal jobs",
    )  # fmt: skip
    args = parser.parse_args()
    # Ctrl-C in a terminal reaches the whole process group; the coordinator owns our
    # lifecycle (it closes stdin, we finish the current job and exit), so ignore it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s worker[{os.getpid()}] %(levelname)s %(name)s: %(message)s")  # fmt: skip
    if args.idle:
        log.info("running at low priority: %s", lower_priority())
    asyncio.run(serve(args.store, args.timeout))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
