"""Backpressure on the transcode side: a job encodes only the rungs it does not skip,
and the skipped ones are announced as gaps at the same sequence number."""

from __future__ import annotations

import asyncio
import json

from tidecast.bus.memory import MemoryBus
from tidecast.messages import SegmentReady, TranscodeJob, decode, encode
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


async def test_skipped_rungs_are_announced_as_gaps() -> None:
    bus = MemoryBus()
    sub = bus.subscribe("segment.>")
    coordinator = TranscodeCoordinator(bus, "file:///nonexistent", workers=1)  # no worker started
    j = job(skip=("720p",))
    outputs = [
        {"rendition": r, "init_key": f"hls/s/b/{r}/init-x.mp4", "segment_key": f"hls/s/b/{r}/000007.m4s",
         "size": 1000, "codecs": "avc1.4d401e", "width": w, "height": h}
        for r, w, h in (("480p", 854, 480), ("240p", 426, 240))
    ]  # fmt: skip
    await coordinator._announce(j, {"ok": True, "outputs": outputs})
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
    await bus.aclose()
