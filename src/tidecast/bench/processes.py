"""What the benches share: the processes they start (servers in sessions of their
own, stopped for sure), the CPU those use, free ports, and a clean stop on Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx

NGINX_CANDIDATES = ("/usr/sbin/nginx",)
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The bench cannot produce a trustworthy figure."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env() -> dict[str, str]:
    """This environment without TIDECAST_* settings (but the ffmpeg choice): the
    bench's servers are configured by their flags alone, whatever the shell has."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TIDECAST_") or k == "TIDECAST_FFMPEG"}  # fmt: skip
    # every simulated viewer comes from 127.0.0.1: lift the per-address cap (meant for
    # real clients, each from an address of its own), the rest stays as users run it
    env.update(TIDECAST_HOST="127.0.0.1", PYTHONUNBUFFERED="1", TIDECAST_HTTP_MAX_PER_IP="8192")
    return env


class Child:
    """A server process with its output in a log file, stopped for sure at the end."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name, self.proc, self.log = name, proc, log

    @classmethod
    async def start(cls, name: str, args: list[str], log: Path, env: dict[str, str]) -> Child:
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                env=env, start_new_session=True,  # Ctrl-C reaches the bench, which stops us in order
            )  # fmt: skip
        return cls(name, proc, log)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def wait_for_line(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text(), re.MULTILINE)
            if m:
                return m
            if self.proc.returncode is not None:
                raise BenchError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            await asyncio.sleep(0.05)
        raise BenchError(
            f"{self.name} did not print {pattern!r} within {timeout:g} s:\n{self.tail()}"
        )

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.text().splitlines()[-n:])

    async def stop(self, sig: int = signal.SIGINT, grace: float = 15) -> int:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        return self.proc.returncode if self.proc.returncode is not None else -1


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (nginx's workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process tree so far."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


async def machine_busy(seconds: float = 1.0) -> float:
    """Share of all cores busy over a short idle moment (both servers idle):
    other work on the machine competes with the runs and shows here."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    busy0, total0 = sample()
    await asyncio.sleep(seconds)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(1, total1 - total0)


def nginx_exe() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return next((p for p in NGINX_CANDIDATES if os.access(p, os.X_OK)), None)


async def wait_http(url: str, server: Child, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if server.proc.returncode is not None:
                raise BenchError(
                    f"{server.name} exited ({server.proc.returncode}):\n{server.tail()}"
                )
            try:
                r = await client.get(url)
                if r.status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            await asyncio.sleep(0.05)
    raise BenchError(f"{url} did not answer 200 within {timeout:g} s")


async def run_interruptibly(work: Coroutine[Any, Any, int], message: str) -> int:
    """Await ``work``; the first Ctrl-C or SIGTERM cancels it (its clean-up stops what it
    started; later signals must not cut that short), prints ``message`` and gives 130."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    interrupted: list[int] = []

    def interrupt(sig: int) -> None:
        if not interrupted:
            interrupted.append(sig)
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt, sig)
    try:
        return await work
    except asyncio.CancelledError:
        if not interrupted:
            raise
        print(message, file=sys.stderr)
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
