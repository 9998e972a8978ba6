"""Supervised tasks: a crashing long-lived task is logged, counted and restarted; one that
returns is done; short tasks' failures are logged and counted, never lost; close cancels
everything within its deadline; ``dump_tasks`` shows where every task waits."""

from __future__ import annotations

import asyncio
import io
import logging

import pytest

from tidecast.metrics import Registry
from tidecast.retry import Backoff
from tidecast.supervise import Supervisor, dump_tasks

FAST = Backoff(initial=0.01, maximum=0.02)


async def test_a_crashing_task_is_restarted_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    reg = Registry()
    sup = Supervisor("t", backoff=FAST, registry=reg)
    runs: list[int] = []
    up = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) < 4:
            raise RuntimeError(f"crash {len(runs)}")
        up.set()
        await asyncio.Event().wait()  # the fourth run stays up

    with caplog.at_level(logging.ERROR, "tidecast.supervise"):
        sup.spawn("flaky", flaky, kind="flaky-kind")
        await asyncio.wait_for(up.wait(), 5)
    assert sup.running("flaky") and sup.crash_count == 3
    assert sup.crashes.value(task="flaky-kind") == 3
    assert sum("task flaky crashed; restarting it" in r.getMessage() for r in caplog.records) == 3
    assert all(r.exc_info for r in caplog.records)  # with the traceback
    with pytest.raises(ValueError, match="already running"):
        sup.spawn("flaky", flaky)
    await sup.aclose(timeout=2)
    assert not sup.running("flaky")


async def test_a_task_that_returns_is_not_restarted() -> None:
    sup = Supervisor("t", backoff=FAST, registry=Registry())
    runs: list[int] = []

    async def once() -> None:
        runs.append(1)

    task = sup.spawn("once", once)
    await asyncio.wait_for(task, 2)
    await asyncio.sleep(0.1)
    assert runs == [1] and not sup.running("once") and sup.crash_count == 0
    sup.spawn("once", once)  # the name is free again
    await sup.aclose(timeout=2)


async def test_short_tasks_failures_are_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    sup = Supervisor("t", registry=Registry())

    async def fail() -> None:
        raise OSError("disk full")

    async def ok() -> int:
        return 7

    with caplog.at_level(logging.ERROR, "tidecast.supervise"):
        bad, good = sup.run("fail", fail()), sup.run("ok", ok())
        assert await sup.drain(2)
    assert await bad is None and await good == 7 and sup.pending() == 0
    assert sup.crashes.value(task="fail") == 1
    assert any("task fail failed" in r.getMessage() for r in caplog.records)


async def test_close_cancels_within_its_deadline(caplog: pytest.LogCaptureFixture) -> None:
    sup = Supervisor("t", registry=Registry())
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async def stubborn() -> None:  # ignores the first cancellation for a while
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)

    sup.spawn("forever", forever)
    sup.run("stubborn", stubborn())
    sup.run("never-started", asyncio.sleep(10))
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, "tidecast.supervise"):
        async with asyncio.timeout(2):
            await sup.aclose(timeout=0.1)
    assert cancelled.is_set()
    assert any("task stubborn did not stop within" in r.getMessage() for r in caplog.records)
    await asyncio.sleep(0.6)  # it ends on its own


async def test_dump_tasks_shows_where_each_task_waits() -> None:
    gate = asyncio.Event()

    async def waiting_for_the_gate() -> None:
        await gate.wait()

    task = asyncio.create_task(waiting_for_the_gate(), name="gatekeeper")
    await asyncio.sleep(0)
    out = io.StringIO()
    text = dump_tasks(out)
    assert out.getvalue().strip() == text.strip()
    block = text.split("--- task gatekeeper:", 1)[1].split("--- ", 1)[0]
    assert "waiting_for_the_gate" in block and "await gate.wait()" in block
    assert "--- thread MainThread" in text
    gate.set()
    await task
