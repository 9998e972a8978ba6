"""The in-process bus: what the contract tests cannot show on NATS (its queues' bounds)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tidecast.bus.base import BusFull
from tidecast.bus.consumer import read_dead_letters
from tidecast.bus.intake import DEAD_PAYLOAD_LIMIT
from tidecast.bus.memory import MemoryBus, subject_matches
from tidecast.messages import MAX_MESSAGE, BroadcastEnded, ChatEvent, SegmentReady, decode, encode


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


async def test_a_full_durable_queue_holds_the_publisher_back_then_refuses() -> None:
    bus = MemoryBus(bound=2, publish_timeout=0.3)
    sub = bus.subscribe("segment.>")
    await bus.publish("segment.main", make_segment(0))
    await bus.publish("segment.main", make_segment(1))
    before = bus.intake.full.value(subject="segment")
    t0 = time.monotonic()
    with pytest.raises(BusFull, match="subscriber of segment.> stayed full"):
        await bus.publish("segment.main", make_segment(2))
    assert 0.25 < time.monotonic() - t0 < 1.0
    assert bus.intake.full.value(subject="segment") - before == 1
    assert sub.pending() == 2  # the refused message went nowhere
    waiting = asyncio.create_task(bus.publish("segment.main", make_segment(3)))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # held back ...
    d = await sub.next(0.1)
    assert d is not None and d.message.sequence == 0  # type: ignore[attr-defined]
    await asyncio.wait_for(waiting, 0.2)  # ... until the consumer takes one
    got = [await sub.next(0.1) for _ in range(3)]
    assert [g.message.sequence for g in got if g is not None] == [1, 3]  # type: ignore[attr-defined]
    assert [m.sequence for m in await bus.replay(["segment.>"], 0)] == [0, 1, 3]  # type: ignore[attr-defined]


async def test_a_group_queue_is_bounded_too_and_takes_redeliveries_back() -> None:
    bus = MemoryBus(bound=2, publish_timeout=0.1)
    w = bus.subscribe("job.>", group="workers")
    for i in range(2):
        await bus.publish("job.transcode.main", make_segment(i))
    d = await w.next(0.1)
    assert d is not None
    await bus.publish("job.transcode.main", make_segment(2))  # room again: the group is full
    with pytest.raises(BusFull):
        await bus.publish("job.transcode.main", make_segment(3))
    await d.nak(0)  # a redelivery is taken back even into a full queue: it was admitted once
    await asyncio.sleep(0.01)
    assert w.pending() == 3
    got = [await w.next(0.1) for _ in range(3)]
    assert sorted((g.message.sequence, g.attempt) for g in got if g is not None) == [(0, 2), (1, 1), (2, 1)]  # type: ignore[attr-defined]


async def test_a_full_mixed_queue_drops_chat_never_the_durable_messages() -> None:
    bus = MemoryBus(bound=2)
    sub = bus.subscribe(">")
    before = bus.intake.dropped.value(subject="chat", reason="overflow")
    await bus.publish("segment.main", make_segment(0))
    for i in range(3):
        await bus.publish("chat.main", ChatEvent("main", "n", {"i": i}))
    got = [await sub.next(0.1) for _ in range(2)]
    assert [type(g.message).__name__ for g in got if g is not None] == ["SegmentReady", "ChatEvent"]
    assert got[1] is not None and got[1].message.event == {"i": 2}  # type: ignore[attr-defined]
    assert bus.intake.dropped.value(subject="chat", reason="overflow") - before == 2


async def test_an_oversize_message_is_poison_and_its_dead_letter_is_bounded() -> None:
    bus = MemoryBus()
    sub = bus.subscribe("segment.>")
    big = b'{"kind":"segment.ready","body":{"pad":"' + b"x" * MAX_MESSAGE + b'"}}'
    await bus.publish_raw("segment.main", big)
    await bus.publish("segment.main", make_segment(1))
    d = await sub.next(0.1)
    assert d is not None and d.message == make_segment(1)
    (dl,) = await read_dead_letters(bus)
    assert "over the" in dl.reason and dl.size == len(big)
    assert dl.data() == big[:DEAD_PAYLOAD_LIMIT]


async def test_a_poison_dead_letter_never_loops() -> None:
    """Bytes on dead.* that are not a message are counted and dropped, not re-dead-lettered."""
    bus = MemoryBus()
    sub = bus.subscribe("dead.>")
    before = bus.intake.poison.value(subject="dead")
    await bus.publish_raw("dead.segment.main", b"not a dead letter")
    assert await sub.next(0.05) is None
    assert bus.intake.poison.value(subject="dead") - before == 1
    assert await bus.replay(["dead.>"], 0) == []


async def test_a_redelivery_with_no_consumer_left_is_counted_and_closing_cancels_the_rest() -> None:
    bus = MemoryBus()
    w = bus.subscribe("job.>", group="workers")
    await bus.publish("job.transcode.main", make_segment(0))
    await bus.publish("job.transcode.main", make_segment(1))
    before = bus.intake.dropped.value(subject="job", reason="no_consumer")
    first, second = await w.next(0.1), await w.next(0.1)
    assert first is not None and second is not None
    await first.nak(0.02)
    await second.nak(30.0)
    await w.aclose()  # the group's last member leaves before the redelivery is due
    await asyncio.sleep(0.1)
    assert bus.intake.dropped.value(subject="job", reason="no_consumer") - before == 1
    assert len(bus._timers) == 1
    await bus.aclose()  # the one due in 30 s is cancelled, not left to fire later
    assert not bus._timers
