"""On NATS JetStream (the real server): a job held longer than the ack wait is kept
alive by progress beats, and the jobs queued behind it are not delivered before a
lane is free, so neither is redelivered and nothing is encoded twice."""

from __future__ import annotations

import secrets

import pytest
from tests.bus.test_bus_contract import NATS_URL, ensure_nats
from tests.transcode.conftest import STREAM, Media, collect

from tidecast.bus.nats import NatsBus
from tidecast.messages import SegmentReady
from tidecast.transcode.coordinator import TranscodeCoordinator

ACK_WAIT = 2.0


async def test_held_and_queued_jobs_outlast_the_ack_wait_without_redelivery(
    media: Media, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_nats()
    monkeypatch.setenv("TIDECAST_FAULT_DELAY", f"0:{2 * ACK_WAIT}")  # job 0 runs twice the ack wait
    bus = NatsBus(NATS_URL, prefix="t" + secrets.token_hex(4), ack_wait=ACK_WAIT)
    await bus.start()
    tc = TranscodeCoordinator(bus, media.url, workers=1, heal=False, progress_every=ACK_WAIT / 4)
    try:
        segments = bus.subscribe(f"segment.{STREAM}")
        await tc.start()
        await bus.ready()
        for seq in range(3):  # 1 and 2 wait behind 0 for longer than the ack wait
            await bus.publish(f"job.transcode.{STREAM}", media.job(seq))
        msgs = await collect(segments, lambda m: len(m) == 6, timeout=60)
        assert sorted((m.sequence, m.rendition) for m in msgs if isinstance(m, SegmentReady)) == [
            (s, r) for s in range(3) for r in ("120p", "180p")]  # fmt: skip
        assert await segments.next(ACK_WAIT + 1) is None  # no second announcement of any job
        snap = tc.snapshot()
        assert snap["jobs_done"] == 3, snap
        assert snap["reused"] == 0 and snap["duplicate_encodes"] == 0 and snap["retries"] == 0, snap
    finally:
        await tc.aclose()
        await bus.delete_stream()
        await bus.aclose()
