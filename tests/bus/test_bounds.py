"""Bounded queues with counted overflow, on both buses: a chat subscriber that falls behind
loses its oldest messages (counted), never the newest; a subscription that cannot start
makes ready() fail with a clear error at its deadline."""

from __future__ import annotations

import asyncio
import time

import pytest
from tests.bus.conftest import MakeBus
from tests.bus.test_bus_contract import take
from tests.bus.test_poison import chat

from tidecast.bus.base import BusNotReady


async def test_a_chat_subscriber_that_falls_behind_drops_the_oldest(make_bus: MakeBus) -> None:
    bus = await make_bus(bound=3)
    sub = bus.subscribe("chat.room")
    await bus.ready()
    before = bus.intake.dropped.value(subject="chat", reason="overflow")
    for i in range(5):
        await bus.publish("chat.room", chat(i))
    deadline = time.monotonic() + 5  # core NATS delivers in the background
    while bus.intake.dropped.value(subject="chat", reason="overflow") - before < 2:
        assert time.monotonic() < deadline, "the overflow was not counted"
        await asyncio.sleep(0.02)
    assert sub.pending() == 3
    assert [d.message for d in await take(sub, 3)] == [chat(2), chat(3), chat(4)]
    assert await sub.next(0.2) is None
    assert bus.intake.dropped.value(subject="chat", reason="overflow") - before == 2


async def test_ready_fails_clearly_when_a_subscription_cannot_start(make_bus: MakeBus) -> None:
    if make_bus.kind == "memory":  # type: ignore[attr-defined]
        pytest.skip("in-process subscriptions are active as soon as they are made")
    bus = await make_bus()
    await bus.delete_stream()  # the group's consumer cannot be made on a stream that is gone
    bus.subscribe("job.>", group="w")
    t0 = time.monotonic()
    with pytest.raises(BusNotReady, match=r"job\.>.*not active.*after 0.5 s"):
        await bus.ready(timeout=0.5)
    assert time.monotonic() - t0 < 2.0
