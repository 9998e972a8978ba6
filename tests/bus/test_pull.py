"""Work queues pull, on both buses: a member holds exactly what it pulled and did not
settle (JetStream: the consumer's num_ack_pending says so), the other members get the rest,
a nak'ed message comes back, concurrent next() calls take turns, every wait ends, and a
NATS restart does not end a waiting next()."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from tests.bus.conftest import MakeBus
from tests.bus.test_bus_contract import seg, take
from tests.services import NatsServer

from tidecast.bus.nats import NatsBus


async def ack_pending(sub: Any, expected: int, timeout: float = 3.0) -> None:
    """JetStream only: the group's unacknowledged messages reach ``expected`` (acks are
    asynchronous) and stay there."""
    if not hasattr(sub, "consumer_info"):
        return
    deadline = time.monotonic() + timeout
    while (n := (await sub.consumer_info()).num_ack_pending) != expected:
        assert time.monotonic() < deadline, f"num_ack_pending {n}, expected {expected}"
        await asyncio.sleep(0.05)


async def test_a_member_holds_exactly_what_it_pulled(make_bus: MakeBus) -> None:
    bus = await make_bus()
    a, b = bus.subscribe("job.>", group="w"), bus.subscribe("job.>", group="w")
    await bus.ready()
    for i in range(10):
        await bus.publish("job.transcode.s", seg(i))
    held = await a.next(5)  # pulled and held, not settled
    assert held is not None
    rest = await take(b, 9)  # the other member gets every other message
    assert sorted([held.message.sequence] + [d.message.sequence for d in rest]) == list(range(10))
    assert await b.next(0.5) is None
    await ack_pending(a, 1)
    for i in range(10, 12):
        await bus.publish("job.transcode.s", seg(i))
    more = [await a.next(5), await a.next(5)]  # a member that pulled 3 holds 3
    assert sorted(d.message.sequence for d in more if d is not None) == [10, 11]
    await ack_pending(a, 3)
    assert await b.next(0.3) is None
    await held.nak(0)  # given back: the other member gets it again
    again = await b.next(5)
    assert again is not None and again.message == held.message and again.attempt == 2
    for d in [again, *more]:
        await d.ack()
    await ack_pending(a, 0)


async def test_concurrent_next_calls_on_one_member_take_turns(make_bus: MakeBus) -> None:
    bus = await make_bus()
    a = bus.subscribe("job.>", group="w")
    await bus.ready()
    await bus.publish("job.transcode.s", seg(0))
    await bus.publish("job.transcode.s", seg(1))
    got = await asyncio.gather(a.next(5), a.next(5), a.next(1.0))
    assert sorted(d.message.sequence for d in got if d is not None) == [0, 1] and got.count(None) == 1
    await ack_pending(a, 2)
    for d in got:
        if d is not None:
            await d.ack()
    await ack_pending(a, 0)


@pytest.mark.parametrize("pattern,group", [("job.>", "w"), ("segment.>", None), ("chat.>", None)])
async def test_next_ends_at_its_timeout_and_when_the_subscription_closes(make_bus: MakeBus, pattern: str, group: str | None) -> None:
    bus = await make_bus()
    sub = bus.subscribe(pattern, group=group)
    await bus.ready()
    t0 = time.monotonic()
    assert await sub.next(0.3) is None
    assert 0.25 < time.monotonic() - t0 < 1.5
    waiting = asyncio.create_task(sub.next())  # no timeout: closing ends it
    await asyncio.sleep(0.2)
    await sub.aclose()
    assert await asyncio.wait_for(waiting, 2) is None
    assert await sub.next(0.1) is None


async def test_next_waits_out_a_nats_restart(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "js")  # the test's own server: it is restarted
    server.start()
    bus = NatsBus(server.url, ack_wait=5.0)
    await bus.start()
    try:
        sub = bus.subscribe("job.>", group="w")
        await bus.ready()
        waiting = asyncio.create_task(sub.next(timeout=30))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(1.0)
        assert not waiting.done()  # the outage did not end it
        await asyncio.to_thread(server.start)
        await bus.publish("job.transcode.s", seg(3))  # retried until the server is back
        d = await asyncio.wait_for(waiting, 20)
        assert d is not None and d.message == seg(3)
        await d.ack()
    finally:
        await bus.aclose()
        server.stop()


async def test_a_fan_out_subscriber_gets_only_new_messages_after_a_nats_restart(tmp_path: Path) -> None:
    """After a server restart the client re-creates an ordered consumer from the last
    message it delivered; one that had delivered nothing yet must not start over from
    the beginning of the stream (every stored message would come again)."""
    server = NatsServer(tmp_path / "js")
    server.start()
    bus = NatsBus(server.url, ack_wait=5.0)
    await bus.start()
    try:
        for n in range(20):  # history: stored before the subscriber came
            await bus.publish("segment.old", seg(n))
        sub = bus.subscribe("segment.>")
        await bus.ready()
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(server.start)
        await bus.publish("segment.new", seg(100))  # retried until the server is back
        got = []
        while (d := await sub.next(timeout=20)) is not None:
            got.append(d.message.sequence)  # type: ignore[attr-defined]
            if got[-1] == 100:
                break
        assert got == [100], got
    finally:
        await bus.aclose()
        server.stop()
