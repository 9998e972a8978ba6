"""consume(), on both buses: a handler that raises has its message dead-lettered, counted
and terminated, and the loop goes on; unsettled deliveries are acked; a nak comes back;
cancelling gives the message in hand back to the group."""

from __future__ import annotations

import asyncio
import time

import pytest
from tests.bus.conftest import MakeBus
from tests.bus.test_bus_contract import seg
from tests.bus.test_poison import chat, no_redelivery

from tidecast.bus.base import Delivery
from tidecast.bus.consumer import DEAD_LETTERS, consume, read_dead_letters
from tidecast.messages import SegmentReady, decode


def number(d: Delivery) -> int:
    m = d.message
    return m.sequence if isinstance(m, SegmentReady) else int(str(m.event["text"]).split()[1])  # type: ignore[attr-defined]


@pytest.mark.parametrize("subject", ["job.transcode.s", "chat.room"])
async def test_a_failing_handler_is_dead_lettered_and_the_loop_goes_on(make_bus: MakeBus, subject: str) -> None:
    bus = await make_bus(ack_wait=1.0)
    work = subject.startswith("job.")
    sub = bus.subscribe("job.>", group="w") if work else bus.subscribe("chat.>")
    await bus.ready()
    seen: list[tuple[int, int]] = []
    done = asyncio.Event()

    async def handler(d: Delivery) -> None:
        seen.append((number(d), d.attempt))
        if number(d) == 2:
            raise RuntimeError("cannot handle number 2")
        if number(d) == 4:
            done.set()

    root = subject.split(".")[0]
    before = DEAD_LETTERS.value(subject=root, consumer="test-stage")
    since = time.time() - 1
    task = asyncio.create_task(consume(sub, handler, bus=bus, name="test-stage"))
    for i in range(5):
        await bus.publish(subject, seg(i) if work else chat(i))
    async with asyncio.timeout(10):
        await done.wait()
    if work:
        await no_redelivery(bus, sub)  # the failed one was terminated, the others acked
    await sub.aclose()
    async with asyncio.timeout(5):
        await task  # the loop ends when its subscription closes
    assert seen == [(i, 1) for i in range(5)]
    assert DEAD_LETTERS.value(subject=root, consumer="test-stage") - before == 1
    (dl,) = await read_dead_letters(bus, since)
    assert dl.subject == subject and dl.consumer == "test-stage"
    assert "RuntimeError: cannot handle number 2" in dl.reason
    assert decode(dl.data()) == (seg(2) if work else chat(2))


async def test_unsettled_deliveries_are_acked_and_a_nak_comes_back(make_bus: MakeBus) -> None:
    bus = await make_bus(ack_wait=1.0)
    sub = bus.subscribe("job.>", group="w")
    await bus.ready()
    seen: list[tuple[int, int]] = []
    done = asyncio.Event()

    async def handler(d: Delivery) -> None:
        seen.append((number(d), d.attempt))
        if number(d) == 0 and d.attempt == 1:
            await d.nak(0.1)  # settled by the handler: consume leaves it alone
        elif number(d) == 0:
            done.set()

    task = asyncio.create_task(consume(sub, handler, bus=bus, name="test-nak"))
    await bus.publish("job.transcode.s", seg(0))
    await bus.publish("job.transcode.s", seg(1))
    async with asyncio.timeout(10):
        await done.wait()
    await no_redelivery(bus, sub)  # the others were acked for the handler
    await sub.aclose()
    await asyncio.wait_for(task, 5)
    assert sorted(seen) == [(0, 1), (0, 2), (1, 1)]


async def test_cancelling_gives_the_message_in_hand_to_another_member(make_bus: MakeBus) -> None:
    bus = await make_bus()  # ack wait 5 s: the message must come back well before that
    a, b = bus.subscribe("job.>", group="w"), bus.subscribe("job.>", group="w")
    await bus.ready()
    started = asyncio.Event()

    async def stuck(d: Delivery) -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(consume(a, stuck, bus=bus, name="test-stuck"))
    await bus.publish("job.transcode.s", seg(7))
    async with asyncio.timeout(10):
        await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    t0 = time.monotonic()
    d = await b.next(3.0)
    assert d is not None and d.message == seg(7) and d.attempt == 2
    assert time.monotonic() - t0 < 3.0
    await d.ack()


async def test_a_failing_settle_does_not_end_the_loop(make_bus: MakeBus) -> None:
    """A handler whose delivery cannot be acknowledged (the bus went away) is logged and the
    loop takes the next one."""
    bus = await make_bus()
    sub = bus.subscribe("chat.>")
    await bus.ready()
    seen: list[int] = []
    done = asyncio.Event()

    async def handler(d: Delivery) -> None:
        seen.append(number(d))

        async def broken() -> None:
            raise ConnectionError("bus away")

        d._ack = broken  # as if the connection dropped before the ack
        if number(d) == 1:
            done.set()

    task = asyncio.create_task(consume(sub, handler, bus=bus, name="test-settle"))
    await bus.publish("chat.room", chat(0))
    await bus.publish("chat.room", chat(1))
    async with asyncio.timeout(10):
        await done.wait()
    await sub.aclose()
    await asyncio.wait_for(task, 5)
    assert seen == [0, 1]

