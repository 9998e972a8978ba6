"""No duplicate encodes: a job writes its outputs record last; a redelivered job that
finds it reuses those outputs, and a job that finds it only after encoding says so."""

from __future__ import annotations

import asyncio
import json

import pytest
from tests.transcode.conftest import STREAM, Media, collect

from tidecast import ffmpeg, keys
from tidecast.bus.memory import MemoryBus
from tidecast.messages import SegmentReady
from tidecast.metrics import Registry
from tidecast.transcode.coordinator import TranscodeCoordinator
from tidecast.transcode.job import outputs_key, run_job


async def test_a_redelivered_job_whose_outputs_are_stored_is_not_encoded_again(media: Media) -> None:
    bus = MemoryBus()
    segments = bus.subscribe(f"segment.{STREAM}")
    registry = Registry()
    tc = TranscodeCoordinator(bus, media.url, workers=1, heal=False, registry=registry)
    await tc.start()
    try:
        job = media.job(4)
        await bus.publish(f"job.transcode.{STREAM}", job)
        first = await collect(segments, lambda m: len(m) == 2)
        record = json.loads(await media.store.get(outputs_key(job)))
        assert record["rungs"] == ["180p", "120p"] and len(record["outputs"]) == 2
        seg_path = media.store.path_for(keys.segment(STREAM, "b1", "180p", 4))
        stamp = seg_path.stat().st_mtime_ns
        await bus.publish(f"job.transcode.{STREAM}", job)  # the same job again (a redelivery)
        again = await collect(segments, lambda m: len(m) == 2)
        assert seg_path.stat().st_mtime_ns == stamp, "the segment was written again"
        key = lambda m: (m.rendition, m.init_key, m.segment_key, m.size, m.codecs)  # noqa: E731
        assert sorted(map(key, again)) == sorted(map(key, first))  # type: ignore[arg-type]
        assert all(isinstance(m, SegmentReady) and not m.gap for m in again)
        snap = tc.snapshot()
        assert snap["jobs_done"] == 2 and snap["reused"] == 1 and snap["duplicate_encodes"] == 0
        text = registry.render()
        assert 'tidecast_transcode_jobs_total{outcome="encoded"} 1' in text
        assert 'tidecast_transcode_jobs_total{outcome="reused"} 1' in text
    finally:
        await tc.aclose()
        await bus.aclose()


async def test_a_record_that_names_missing_objects_is_not_trusted(media: Media, ffmpeg_exe: str) -> None:
    job = media.job(5)
    first = await run_job(job, media.store, exe=ffmpeg_exe, timeout=30)
    assert first.ok and not first.reused
    await media.store.delete(first.outputs[0].segment_key)  # lost from the store somehow
    second = await run_job(job, media.store, exe=ffmpeg_exe, timeout=30)
    assert not second.reused and await media.store.exists(first.outputs[0].segment_key)
    await media.store.put(outputs_key(job), b"{not json")
    third = await run_job(job, media.store, exe=ffmpeg_exe, timeout=30)
    assert not third.reused and [o.segment_key for o in third.outputs] == [o.segment_key for o in second.outputs]
    assert (await run_job(job, media.store, exe=ffmpeg_exe, timeout=30)).reused


async def test_an_attempt_that_finishes_second_writes_and_reports_a_duplicate(
    media: Media, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIDECAST_FAULT_STALL", "6:3")  # the worker pauses after its encode
    bus = MemoryBus()
    segments = bus.subscribe(f"segment.{STREAM}")
    registry = Registry()
    tc = TranscodeCoordinator(bus, media.url, workers=1, heal=False, registry=registry)
    await tc.start()
    try:
        job = media.job(6)
        await bus.publish(f"job.transcode.{STREAM}", job)
        seg = keys.segment(STREAM, "b1", "120p", 6)
        loop = asyncio.get_running_loop()
        end = loop.time() + 20
        while not await media.store.exists(seg):  # the worker encoded and is paused now
            assert loop.time() < end
            await asyncio.sleep(0.05)
        assert not await media.store.exists(outputs_key(job))
        other = await run_job(job, media.store, exe=ffmpeg.ffmpeg_exe(), timeout=30)  # another attempt
        assert other.ok and not other.reused and not other.duplicate
        msgs = await collect(segments, lambda m: len(m) == 2)
        assert all(isinstance(m, SegmentReady) and not m.gap for m in msgs)
        snap = tc.snapshot()
        assert snap["duplicate_encodes"] == 1 and snap["reused"] == 0 and snap["jobs_done"] == 1
        assert "tidecast_transcode_duplicate_encodes_total 1" in registry.render()
        assert await media.store.exists(outputs_key(job))
    finally:
        await tc.aclose()
        await bus.aclose()
