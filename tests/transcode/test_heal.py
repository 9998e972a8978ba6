"""Recordings heal: what live skipped or lost becomes a heal job; the heal lane runs it
at idle priority, only while a live lane is free, and announces it at the live keys."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from tests.transcode.conftest import STREAM, Media, collect

from tidecast import keys
from tidecast.bus.memory import MemoryBus
from tidecast.messages import JobFailed, Message, SegmentReady, TranscodeJob
from tidecast.transcode.coordinator import TranscodeCoordinator
from tidecast.transcode.job import encoded_rungs, heal_job


def names(job: TranscodeJob) -> list[str]:
    return [r.name for r in encoded_rungs(job)]


async def test_skipped_and_dead_lettered_rungs_become_gaps_and_heal_jobs(
    media: Media, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDECAST_FAULT_FAIL", "2")
    bus = MemoryBus()
    segments = bus.subscribe(f"segment.{STREAM}")
    heals = bus.subscribe("job.heal.>", group="heal")  # no heal lane here: the test takes them
    dead = bus.subscribe("dead.>")
    tc = TranscodeCoordinator(bus, media.url, workers=1, heal=False, max_attempts=2, backoff=0.05)
    await tc.start()
    try:
        await bus.publish(f"job.transcode.{STREAM}", media.job(1, skip=("180p",)))  # backpressure
        await bus.publish(f"job.transcode.{STREAM}", media.job(2))  # always fails
        msgs = [m for m in await collect(segments, lambda m: len(m) == 4) if isinstance(m, SegmentReady)]
        got = {(m.sequence, m.rendition): m for m in msgs}
        assert sorted(got) == [(1, "120p"), (1, "180p"), (2, "120p"), (2, "180p")]
        assert not got[(1, "120p")].gap and got[(1, "180p")].gap
        assert got[(2, "120p")].gap and got[(2, "180p")].gap
        jobs: list[Message] = await collect(heals, lambda m: len(m) == 2)
        heal = {j.sequence: j for j in jobs if isinstance(j, TranscodeJob)}
        assert all(j.heal for j in heal.values())
        assert names(heal[1]) == ["180p"] and heal[1].skip == ("120p",)  # just what was skipped
        assert names(heal[2]) == ["180p", "120p"] and heal[2].skip == ()  # every rung
        assert heal[2].rungs == media.job(2).rungs and heal[2].renditions == media.job(2).renditions
        assert await heals.next(0.3) is None  # one heal job each, no more
        letters = await collect(dead, lambda m: len(m) == 1)
        assert isinstance(letters[0], JobFailed) and letters[0].job["sequence"] == 2
        assert tc.snapshot()["heal_jobs_published"] == 2
    finally:
        await tc.aclose()
        await bus.aclose()


async def test_the_heal_lane_waits_for_a_free_live_lane_and_heals_at_the_live_keys(
    media: Media, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDECAST_FAULT_DELAY", "0:2.5")  # live job 0 keeps the only live lane busy
    bus = MemoryBus()
    segments = bus.subscribe(f"segment.{STREAM}")
    heal_queue = bus.subscribe("job.heal.>", group="heal")  # sees the heal queue, never pulls
    tc = TranscodeCoordinator(bus, media.url, workers=1, heal_poll=0.2)
    await tc.start()
    loop = asyncio.get_running_loop()
    try:
        await bus.publish(f"job.transcode.{STREAM}", media.job(0))
        end = loop.time() + 20
        while tc.held() == 0:
            assert loop.time() < end
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # past the heal lane's last look at the live lanes
        await bus.publish(f"job.heal.{STREAM}", heal_job(media.job(3), ["180p"]))
        while tc.held() == 1:  # the live lane is busy: the heal job stays queued
            assert heal_queue.pending() == 1, "the heal lane pulled while no live lane was free"
            assert tc._heal_lane is not None and tc._heal_lane.delivery is None
            await asyncio.sleep(0.02)
        msgs = [m for m in await collect(segments, lambda m: len(m) == 3) if isinstance(m, SegmentReady)]
        live = {m.rendition: m for m in msgs if m.sequence == 0}
        healed = [m for m in msgs if m.sequence == 3]
        assert sorted(live) == ["120p", "180p"] and not any(m.heal for m in live.values())
        assert len(healed) == 1
        h = healed[0]
        assert h.heal and not h.gap and h.rendition == "180p" and h.size > 0
        assert h.segment_key == keys.segment(STREAM, "b1", "180p", 3)
        # same preset, same rung: the same init segment, so the same EXT-X-MAP
        assert h.init_key == live["180p"].init_key
        assert h.renditions == live["180p"].renditions
        assert await media.store.exists(h.segment_key)
        snap = tc.snapshot()
        assert snap["heal_jobs_done"] == 1 and snap["jobs_done"] == 1 and heal_queue.pending() == 0
    finally:
        await tc.aclose()
        await bus.aclose()


async def test_a_starved_heal_job_is_not_a_failed_attempt_but_real_failures_dead_letter_it(
    media: Media, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the first try outlasts the heal timeout (as if it got no CPU), then fails; later tries fail fast
    monkeypatch.setenv("TIDECAST_FAULT_HEAL_DELAY", "4:1.2")
    monkeypatch.setenv("TIDECAST_FAULT_HEAL_FAIL", "4")
    bus = MemoryBus()
    segments = bus.subscribe(f"segment.{STREAM}")
    dead = bus.subscribe("dead.>")
    tc = TranscodeCoordinator(bus, media.url, workers=1, max_attempts=2, backoff=0.05,
                              heal_timeout=1.0, heal_poll=0.1)  # fmt: skip
    await tc.start()
    try:
        await bus.publish(f"job.heal.{STREAM}", heal_job(media.job(4), ["180p", "120p"]))
        letters = await collect(dead, lambda m: len(m) == 1)
        failed = letters[0]
        assert isinstance(failed, JobFailed) and failed.attempts == 2  # the starved try not counted
        assert failed.job["heal"] is True and failed.job["sequence"] == 4
        snap = tc.snapshot()
        assert snap["heal_starved"] == 1 and snap["heal_retries"] == 1 and snap["heal_dead_lettered"] == 1
        assert snap["dead_lettered"] == 0  # live numbers untouched
        assert await segments.next(0.3) is None  # no new gaps: they are gaps already
    finally:
        await tc.aclose()
        await bus.aclose()


async def test_the_heal_worker_runs_at_idle_priority(media: Media, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tidecast.transcode")
    bus = MemoryBus()
    tc = TranscodeCoordinator(bus, media.url, workers=1)
    await tc.start()
    try:
        assert tc.heal_worker is not None and tc.heal_worker.pid is not None
        live_pid, heal_pid = tc.workers[0].pid, tc.heal_worker.pid
        assert live_pid is not None
        loop = asyncio.get_running_loop()
        end = loop.time() + 20
        while "running at low priority" not in caplog.text:  # it lowers itself as it starts
            assert loop.time() < end
            await asyncio.sleep(0.05)
        assert os.sched_getscheduler(heal_pid) == os.SCHED_IDLE
        sched = await asyncio.to_thread(Path(f"/proc/{heal_pid}/sched").read_text)
        policy = next(line for line in sched.splitlines() if line.startswith("policy"))
        assert policy.split(":")[1].strip() == str(os.SCHED_IDLE)
        assert "running at low priority: SCHED_IDLE" in caplog.text
        assert os.sched_getscheduler(live_pid) == os.SCHED_OTHER  # live workers are not lowered
    finally:
        await tc.aclose()
        await bus.aclose()
