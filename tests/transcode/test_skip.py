"""Backpressure on the transcode side: a job encodes only the rungs it does not skip,
the skipped ones are announced as gaps at the same sequence number, and one heal
job asks for them to be encoded later."""

from __future__ import annotations

import asyncio
import json

from tidecast.bus.memory import MemoryBus
from tidecast.messages import (
    RenditionOutput,
    SegmentReady,
    TranscodeJob,
    WorkerReply,
    decode,
    encode,
)
from tidecast.transcode.coordinator import TranscodeCoordinator
from tidecast.transcode.job import encoded_rungs, planned_rungs, skipped_rungs
from tidecast.transcode.ladder import parse_ladder

LADDER = tuple(r.to_dict() for r in parse_ladder("720:2000,480:900,240:300"))


def job(skip: tuple[str, ...] = (), **kw: object) -> TranscodeJob:
    fields: dict[str, object] = dict(
        stream="s", broadcast="b", sequence=7, start=14.0, duration=2.0,
        source_init_key="hls/s/b/source/init-p0g0.mp4", source_segment_key="hls/s/b/source/000007.m4s",
        width=1280, height=720, frame_rate=30.0, audio_codec="mp4a.40.2", rungs=LADDER, skip=skip,
    )  # fmt: skip
    fields.update(kw)
    return TranscodeJob(**fields)  # type: ignore[arg-type]


def names(rungs: tuple) -> list[str]:  # type: ignore[type-arg]
    return [r.name for r in rungs]


def test_encoded_rungs_leave_out_the_skipped_ones() -> None:
    j = job(skip=("720p",))
    assert names(planned_rungs(j)) == ["720p", "480p", "240p"]  # the plan stays whole
    assert names(encoded_rungs(j)) == ["480p", "240p"]
    assert names(skipped_rungs(j)) == ["720p"]
    assert names(encoded_rungs(job())) == ["720p", "480p", "240p"]


def test_skip_survives_the_wire_and_old_jobs_skip_nothing() -> None:
    j = job(skip=("720p", "480p"))
    assert decode(encode(j)) == j
    raw = json.loads(encode(job()))
    del raw["body"]["skip"]  # a job from a segmenter that predates backpressure
    old = decode(json.dumps(raw).encode())
    assert isinstance(old, TranscodeJob) and old.skip == ()


async def test_skipped_rungs_are_announced_as_gaps_and_healed_later() -> None:
    bus = MemoryBus()
    sub = bus.subscribe("segment.>")
    heal = bus.subscribe("job.heal.>", group="heal")
    coordinator = TranscodeCoordinator(bus, "file:///nonexistent", workers=1)  # no worker started
    j = job(skip=("720p",))
    outputs = tuple(
        RenditionOutput(r, f"hls/s/b/{r}/init-x.mp4", f"hls/s/b/{r}/000007.m4s", 1000, "avc1.4d401e", w, h)
        for r, w, h in (("480p", 854, 480), ("240p", 426, 240))
    )  # fmt: skip
    await coordinator._announce(j, WorkerReply(ok=True, outputs=outputs))
    got: dict[str, SegmentReady] = {}
    deliveries = aiter(sub)
    while len(got) < 3:
        delivery = await asyncio.wait_for(anext(deliveries), 1)
        assert isinstance(delivery.message, SegmentReady)
        got[delivery.message.rendition] = delivery.message
    assert sorted(got) == ["240p", "480p", "720p"]
    assert got["720p"].gap and got["720p"].size == 0 and got["720p"].init_key == ""
    assert got["720p"].segment_key == "hls/s/b/720p/000007.m4s"
    assert not got["480p"].gap and not got["240p"].gap
    for m in got.values():  # every rendition at the same sequence, the full set named
        assert m.sequence == 7 and m.renditions == ("720p", "480p", "240p", "audio")
        assert not m.heal
    # one heal job, for the skipped rung only, on the heal subject
    delivery = await heal.next(1)
    assert delivery is not None and delivery.subject == "job.heal.s"
    healing = delivery.message
    assert isinstance(healing, TranscodeJob) and healing.heal
    assert names(encoded_rungs(healing)) == ["720p"] and healing.rungs == j.rungs
    assert healing.skip == ("480p", "240p") and healing.sequence == 7
    assert await heal.next(0.2) is None and heal.pending() == 0  # just one
    await bus.aclose()


async def test_renditions_come_from_the_job_when_it_names_them() -> None:
    bus = MemoryBus()
    sub = bus.subscribe("segment.>")
    coordinator = TranscodeCoordinator(bus, "file:///nonexistent", workers=1)
    await coordinator._announce_gaps(job(renditions=("720p", "480p", "240p", "audio", "extra")),
                                     planned_rungs(job())[:1])  # fmt: skip
    delivery = await sub.next(1)
    assert delivery is not None and isinstance(delivery.message, SegmentReady)
    assert delivery.message.renditions == ("720p", "480p", "240p", "audio", "extra")
    await bus.aclose()
