from __future__ import annotations

import asyncio

from tidecast.bus.memory import MemoryBus, subject_matches
from tidecast.messages import BroadcastEnded, SegmentReady, decode, encode


def make_segment(seq: int) -> SegmentReady:
    return SegmentReady(
        stream="main", broadcast="b1", rendition="source", sequence=seq, start=2.0 * seq,
        duration=2.0, init_key="hls/main/b1/source/init0.mp4",
        segment_key=f"hls/main/b1/source/{seq:06d}.m4s", size=1000, timings={"stored": 1.5},
    )  # fmt: skip


def test_messages_round_trip_through_the_wire_format() -> None:
    msg = make_segment(3)
    assert decode(encode(msg)) == msg
    end = BroadcastEnded("main", "b1", 12.5, "unpublished")
    assert decode(encode(end)) == end


def test_subject_patterns() -> None:
    assert subject_matches("segment.>", "segment.main")
    assert subject_matches("segment.*", "segment.main")
    assert not subject_matches("segment.*", "segment.main.x")
    assert not subject_matches("segment.>", "segment")
    assert not subject_matches("broadcast.>", "segment.main")


async def test_fan_out_and_queue_groups() -> None:
    bus = MemoryBus()
    a = bus.subscribe("segment.>")
    b = bus.subscribe("segment.main")
    w1 = bus.subscribe("segment.>", group="workers")
    w2 = bus.subscribe("segment.>", group="workers")
    for i in range(4):
        await bus.publish("segment.main", make_segment(i))
    assert a.pending() == 4 and b.pending() == 4
    assert w1.pending() == w2.pending() == 4  # one shared queue: members pull from it
    got = [await w1.next(0.1), await w2.next(0.1), await w1.next(0.1), await w2.next(0.1)]
    assert sorted(d.message.sequence for d in got if d is not None) == [0, 1, 2, 3]  # type: ignore[attr-defined]
    assert await w1.next(0.05) is None  # each message went to one member


async def test_nak_redelivers_with_attempt_count() -> None:
    bus = MemoryBus()
    sub = bus.subscribe("segment.>")
    await bus.publish("segment.main", make_segment(0))
    seen = []
    async with asyncio.timeout(2):
        async for d in sub:
            seen.append(d.attempt)
            if d.attempt < 3:
                await d.nak(0.01)
            else:
                await d.ack()
                break
    assert seen == [1, 2, 3]
    await bus.aclose()
