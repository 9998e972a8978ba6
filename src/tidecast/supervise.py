"""Supervised tasks: every long-lived task of a component is started here.

A ``Supervisor`` owns the tasks of one component. ``spawn`` starts a
long-lived task from a factory; when the task raises, the crash is logged
with its traceback, counted (``tidecast_task_crashes_total{task}``), and the
task is started again after an exponential backoff (reset once it has run
for a while without crashing). A task that returns is done and not
restarted. ``run`` starts a short task (a close, a timer) that is tracked and
awaited on close, its failure logged and counted, so no task is ever left
unawaited. ``aclose`` cancels everything and waits for it, with a deadline.

Usage::

    sup = Supervisor("packager")
    sup.spawn("packager-consume", lambda: self._consume(sub))
    sup.run("chat-drop", self._drop(conn))
    ...
    await sup.aclose()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from tidecast.metrics import REGISTRY, Registry
from tidecast.retry import Backoff

log = logging.getLogger("tidecast.supervise")

Factory = Callable[[], Awaitable[None]]

STABLE_AFTER = 30.0  # seconds without a crash that reset the restart backoff


class Supervisor:
    def __init__(
        self, component: str, *, backoff: Backoff | None = None, registry: Registry = REGISTRY
    ) -> None:
        self.component = component
        self.backoff = backoff or Backoff(initial=0.1, maximum=10.0)
        self.crashes = registry.counter(
            "tidecast_task_crashes_total",
            "Supervised tasks that raised (each is restarted after a backoff).",
            ("task",),
        )
        self.crash_count = 0
        self._long: dict[str, asyncio.Task[None]] = {}
        self._short: set[asyncio.Task[Any]] = set()
        self._closing = False

    # -- long-lived --------------------------------------------------------------
    def spawn(self, name: str, factory: Factory, *, kind: str | None = None) -> asyncio.Task[None]:
        """Start ``factory()`` and keep it running: restarted after each crash.

        ``kind`` labels the crash counter (default ``name``): give tasks that exist
        once per stream or connection a shared kind, so the metric stays small.
        """
        if name in self._long and not self._long[name].done():
            raise ValueError(f"{self.component}: a task named {name!r} is already running")
        task = asyncio.create_task(self._keep(name, factory, kind or name), name=name)
        self._long[name] = task
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[None]) -> None:
        if self._long.get(task.get_name()) is task:
            del self._long[task.get_name()]

    def running(self, name: str) -> bool:
        t = self._long.get(name)
        return t is not None and not t.done()

    async def _keep(self, name: str, factory: Factory, kind: str) -> None:
        delays = self.backoff.delays()
        while True:
            started = time.monotonic()
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.crash_count += 1
                self.crashes.inc(task=kind)
                if time.monotonic() - started > STABLE_AFTER:
                    delays = self.backoff.delays()
                delay = next(delays)
                log.exception("%s: task %s crashed; restarting it in %.2f s", self.component, name, delay)
            await asyncio.sleep(delay)

    async def stop(self, name: str) -> None:
        """Cancel one long-lived task and wait for it."""
        task = self._long.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # -- short -----------------------------------------------------------------------
    def run(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Start a short task: tracked, its failure logged and counted, awaited on close."""
        task = asyncio.create_task(self._once(name, coro), name=name)
        self._short.add(task)
        task.add_done_callback(self._short.discard)
        # cancelled before it ever ran: close the coroutine (no "never awaited" warning)
        task.add_done_callback(lambda t: coro.close() if t.cancelled() else None)
        return task

    async def _once(self, name: str, coro: Coroutine[Any, Any, Any]) -> Any:
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            self.crash_count += 1
            self.crashes.inc(task=name)
            log.exception("%s: task %s failed", self.component, name)
            return None

    def pending(self) -> int:
        """Short tasks still running."""
        return len(self._short)

    async def drain(self, timeout: float) -> bool:
        """Wait (at most ``timeout``) for the short tasks to finish; True if they did."""
        if not self._short:
            return True
        _, pending = await asyncio.wait(set(self._short), timeout=timeout)
        return not pending

    async def aclose(self, timeout: float = 10.0) -> None:
        """Cancel every task and wait for them (at most ``timeout``)."""
        self._closing = True
        tasks = [*self._long.values(), *self._short]
        self._long.clear()
        for t in tasks:
            t.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            log.warning("%s: task %s did not stop within %.0f s", self.component, t.get_name(), timeout)
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                log.warning("%s: task %s ended with %r", self.component, t.get_name(), t.exception())


def dump_tasks(out: Any = None) -> str:
    """Every asyncio task of the running loop with where it waits, and every thread's
    stack: what a node is doing, for an operator's ``kill -USR1 PID`` (``tidecast``
    nodes install it). Written to ``out`` (stderr by default) and returned."""
    import io
    import sys
    import threading
    import traceback

    buf = io.StringIO()
    tasks = sorted(asyncio.all_tasks(), key=lambda t: t.get_name())
    buf.write(f"===== {len(tasks)} asyncio tasks\n")
    for task in tasks:
        buf.write(f"--- task {task.get_name()}: {task.get_coro()!r}\n")
        for frame in task.get_stack(limit=12):
            buf.write("".join(traceback.format_stack(frame, limit=1)))
    names = {t.ident: t.name for t in threading.enumerate()}
    frames = sys._current_frames()
    buf.write(f"===== {len(frames)} threads\n")
    for ident, frame in frames.items():
        buf.write(f"--- thread {names.get(ident, ident)}\n")
        buf.write("".join(traceback.format_stack(frame, limit=12)))
    text = buf.getvalue()
    print(text, file=out or sys.stderr, flush=True)
    return text
