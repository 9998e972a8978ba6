"""A transcode worker process: ``python -m tidecast.transcode.worker --store URL``.

Reads one JSON request per line on stdin ({"job": <bus wire form>}), runs it,
answers one JSON line on stdout ({"ok": true, "outputs": [...]} or
{"ok": false, "error": "..."}). Stateless: any worker can take any job, and a
worker that dies mid-job costs one retry, because outputs have deterministic
keys. Fault injection for tests comes from the environment:
``TIDECAST_FAULT_DELAY="SEQ:SECONDS"`` delays that sequence number once per
process, ``TIDECAST_FAULT_FAIL="SEQ"`` makes that sequence always fail.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
from pathlib import Path

from tidecast import ffmpeg
from tidecast.messages import MessageError, TranscodeJob, decode
from tidecast.store.base import Store
from tidecast.store.factory import open_store
from tidecast.transcode.job import JobError, run_job

log = logging.getLogger("tidecast.worker")


def _fault(name: str) -> str:
    return os.environ.get(f"TIDECAST_FAULT_{name}", "")


async def handle(
    line: str, store: Store, exe: str, timeout: float, delayed: set[int]
) -> dict[str, object]:
    try:
        job = decode(json.loads(line)["job"].encode())
    except (ValueError, KeyError, TypeError, MessageError) as exc:
        return {"ok": False, "error": f"bad request: {exc}", "permanent": True}
    if not isinstance(job, TranscodeJob):
        return {"ok": False, "error": f"not a transcode job: {job.kind}", "permanent": True}
    delay = _fault("DELAY")
    if delay:
        seq, seconds = delay.split(":")
        if int(seq) == job.sequence and job.sequence not in delayed:
            delayed.add(job.sequence)
            await asyncio.sleep(float(seconds))
    if _fault("FAIL") and int(_fault("FAIL")) == job.sequence:
        return {"ok": False, "error": f"injected failure for segment {job.sequence}"}
    try:
        outputs = await run_job(job, store, exe=exe, timeout=timeout)
    except JobError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "outputs": [dataclasses.asdict(o) for o in outputs]}


async def serve(store_url: str, timeout: float) -> None:
    store = open_store(store_url, Path("."))
    exe = ffmpeg.ffmpeg_exe()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    delayed: set[int] = set()
    while line := await reader.readline():
        reply = await handle(line.decode(), store, exe, timeout, delayed)
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


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
    args = parser.parse_args()
    # Ctrl-C in a terminal reaches the whole process group; the coordinator owns our
    # lifecycle (it closes stdin, we finish the current job and exit), so ignore it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s worker[{os.getpid()}] %(levelname)s %(name)s: %(message)s")  # fmt: skip
    asyncio.run(serve(args.store, args.timeout))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
