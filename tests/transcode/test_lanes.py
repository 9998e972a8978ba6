"""Worker lanes with real worker processes and real ffmpeg: a lane pulls a job only
when it is free (queued jobs stay on the bus), and a lane survives a worker that
answers garbage, answers the wrong outputs or dies, and goes on with the next job."""

from __future__ import annotations

import asyncio
import sys

import pytest
from tests.transcode.conftest import STREAM, Media, collect

from tidecast import keys
from tidecast.bus.memory import MemoryBus
from tidecast.messages import DeadLetter, JobFailed, Message, SegmentReady
from tidecast.metrics import Registry
from tidecast.transcode.coordinator import TranscodeCoordinator


def ready(msgs: list[Message]) -> list[SegmentReady]:
    return [m for m in msgs if isinstance(m, SegmentReady)]


async def test_one_free_lane_holds_one_job_and_the_rest_stay_on_the_bus(
    media: Media, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDECAST_FAULT_DELAY", "0:1.5")  # the first job takes a while
    bus = MemoryBus()
    segments = bus.subscribe(f"segment.{STREAM}")
    queue = bus.subscribe("job.transcode.>", group="transcode")  # sees the group's queue, never pulls
    registry = Registry()
    tc = TranscodeCoordinator(bus, media.url, workers=1, heal=False, registry=registry)
    await tc.start()
    try:
        for seq in range(5):
            await bus.publish(f"job.transcode.{STREAM}", media.job(seq))
        saw_four_queued = False
        loop = asyncio.get_running_loop()
        end = loop.time() + 60
        while tc.stats.jobs_done < 5:
            assert loop.time() < end, tc.snapshot()
            held, queued = tc.held(), queue.pending()
            assert held <= 1, "a lane took a job it could not start"
            assert queued + held + tc.stats.jobs_done == 5  # every job: queued, held or done
            saw_four_queued |= held == 1 and queued == 4
            await asyncio.sleep(0.02)
        assert saw_four_queued, "never saw the 4 other jobs wait on the bus"
        msgs = ready(await collect(segments, lambda m: len(m) == 10))
        assert sorted((m.sequence, m.rendition) for m in msgs) == [
            (s, r) for s in range(5) for r in ("120p", "180p")]  # fmt: skip
        assert not any(m.gap or m.heal for m in msgs)
        # nothing was delivered twice, nothing encoded twice
        snap = tc.snapshot()
        assert snap["retries"] == 0 and snap["reused"] == 0 and snap["duplicate_encodes"] == 0
        assert registry.render().count('tidecast_transcode_jobs_total{outcome="encoded"} 5') == 1
    finally:
        await tc.aclose()
        await bus.aclose()
    assert not tc.workers[0].alive


@pytest.mark.parametrize(
    ("fault", "value", "restarts"),
    [
        ("TIDECAST_FAULT_REPLY", "1:this is not JSON {", 2),  # garbage: the worker is restarted
        ("TIDECAST_FAULT_REPLY", '1:{"ok": true, "outputs": []}', 0),  # a reply, but not for this job
        ("TIDECAST_FAULT_EXIT", "1", 2),  # the worker dies mid-job
    ],
    ids=["garbage", "wrong-outputs", "exit"],
)
async def test_a_lane_survives_a_bad_worker_and_serves_the_next_job(
    media: Media, monkeypatch: pytest.MonkeyPatch, fault: str, value: str, restarts: int
) -> None:
    monkeypatch.setenv(fault, value)
    bus = MemoryBus()
    segments = bus.subscribe(f"segment.{STREAM}")
    dead = bus.subscribe("dead.>")
    tc = TranscodeCoordinator(bus, media.url, workers=1, heal=False, max_attempts=2, backoff=0.05)
    await tc.start()
    try:
        first_pid = tc.workers[0].pid
        for seq in range(3):
            await bus.publish(f"job.transcode.{STREAM}", media.job(seq))
        # 0 and 2 encoded; 1 failed twice, dead-lettered, both rungs gaps
        msgs = ready(await collect(segments, lambda m: len(m) == 6))
        by_seq = {(m.sequence, m.rendition): m for m in msgs}
        assert sorted(by_seq) == [(s, r) for s in range(3) for r in ("120p", "180p")]
        assert all(by_seq[(1, r)].gap for r in ("120p", "180p"))
        assert not any(by_seq[(s, r)].gap for s in (0, 2) for r in ("120p", "180p"))
        letters = await collect(dead, lambda m: len(m) == 1)
        assert isinstance(letters[0], JobFailed) and letters[0].attempts == 2
        assert letters[0].job["sequence"] == 1
        snap = tc.snapshot()
        assert snap["jobs_done"] == 2 and snap["dead_lettered"] == 1 and snap["retries"] == 1
        assert snap["worker_restarts"] == restarts and snap["lane_errors"] == 0
        assert tc._sup.crash_count == 0  # the lane never crashed: it handled it
        # and the lane still serves
        await bus.publish(f"job.transcode.{STREAM}", media.job(3))
        later = ready(await collect(segments, lambda m: len(m) == 2))
        assert {(m.sequence, m.gap) for m in later} == {(3, False)}
        assert tc.workers[0].alive and (tc.workers[0].pid != first_pid) == (restarts > 0)
    finally:
        await tc.aclose()
        await bus.aclose()


async def test_a_message_that_is_not_a_job_is_dead_lettered_and_the_lane_goes_on(media: Media) -> None:
    bus = MemoryBus()
    segments = bus.subscribe(f"segment.{STREAM}")
    dead = bus.subscribe("dead.>")
    tc = TranscodeCoordinator(bus, media.url, workers=1, heal=False)
    await tc.start()
    try:
        await bus.publish(f"job.transcode.{STREAM}", JobFailed(job={}, attempts=1, error="x", failed_at=0))
        await bus.publish(f"job.transcode.{STREAM}", media.job(0))
        letters = await collect(dead, lambda m: len(m) == 1)
        assert isinstance(letters[0], DeadLetter) and letters[0].subject == f"job.transcode.{STREAM}"
        msgs = ready(await collect(segments, lambda m: len(m) == 2))
        assert {m.segment_key for m in msgs} == {keys.segment(STREAM, "b1", r, 0) for r in ("120p", "180p")}
        assert tc.stats.poison == 1
    finally:
        await tc.aclose()
        await bus.aclose()



class FlakyBus(MemoryBus):
    """A MemoryBus whose first publish on ``segment.`` fails, as a broker outage would."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    async def publish(self, subject: str, message: Message) -> None:
        if subject.startswith("segment.") and self.failures:
            self.failures -= 1
            raise ConnectionError("the bus is down")
        await super().publish(subject, message)


async def test_an_error_after_the_encode_hands_the_job_back_and_the_retry_reuses_it(media: Media) -> None:
    bus = FlakyBus()
    segments = bus.subscribe(f"segment.{STREAM}")
    tc = TranscodeCoordinator(bus, media.url, workers=1, heal=False, backoff=0.05)
    await tc.start()
    try:
        await bus.publish(f"job.transcode.{STREAM}", media.job(0))
        msgs = ready(await collect(segments, lambda m: len(m) == 2))
        assert {(m.sequence, m.gap) for m in msgs} == {(0, False)}
        snap = tc.snapshot()
        assert snap["lane_errors"] == 1 and snap["retries"] == 1 and snap["reused"] == 1
        assert snap["jobs_done"] == 1 and tc._sup.crash_count == 0
    finally:
        await tc.aclose()
        await bus.aclose()


async def test_a_worker_that_cannot_start_leaves_the_job_on_the_bus(media: Media) -> None:
    bus = MemoryBus()
    segments = bus.subscribe(f"segment.{STREAM}")
    queue = bus.subscribe("job.transcode.>", group="transcode")
    tc = TranscodeCoordinator(bus, media.url, workers=1, heal=False,
                              worker_command=["/nonexistent/python", "-m", "tidecast.transcode.worker"])  # fmt: skip
    await tc.start()
    try:
        await bus.publish(f"job.transcode.{STREAM}", media.job(0))
        await asyncio.sleep(1.5)  # the lane tries to start its worker, with backoff
        assert not tc.workers[0].alive and queue.pending() == 1 and tc.held() == 0
        assert tc.stats.attempts_failed == 0  # no attempt used up by a broken host
        tc.workers[0].command = (sys.executable, "-m", "tidecast.transcode.worker")  # repaired
        msgs = ready(await collect(segments, lambda m: len(m) == 2))
        assert {(m.sequence, m.gap) for m in msgs} == {(0, False)}
        assert tc._sup.crash_count == 0
    finally:
        await tc.aclose()
        await bus.aclose()
