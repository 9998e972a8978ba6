"""Bytes that are not a message never reach a consumer, on both buses: each poison message
is counted once per process, lands once in dead.<subject> with its bytes, is never
redelivered, and the consumers go on. A message with an unknown extra field is delivered."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest
from tests.bus.conftest import MakeBus
from tests.bus.test_bus_contract import seg, take

from tidecast.bus.consumer import read_dead_letters
from tidecast.messages import ChatEvent, Message, decode, encode


def chat(i: int) -> ChatEvent:
    return ChatEvent("room", "node1", {"type": "message", "text": f"hi {i}"})


def poison_cases(valid: bytes) -> dict[str, bytes]:
    """Every way bytes can fail to be a message, built from a valid one."""
    raw = json.loads(valid)
    missing, wrong = json.loads(valid), json.loads(valid)
    del missing["body"][list(raw["body"])[1]]  # a required field (broadcast / node)
    wrong["body"]["stream"] = [1]  # a list where a string is due
    return {
        "garbage": b"\x00\xff\xfe not a message at all",
        "truncated JSON": valid[: len(valid) // 2],
        "unknown kind": json.dumps({"kind": "no.such.kind", "body": raw["body"]}).encode(),
        "missing field": json.dumps(missing).encode(),
        "wrong type": json.dumps(wrong).encode(),
    }


def with_extra_field(msg: Message, name: str = "added_in_a_later_version") -> bytes:
    raw = json.loads(encode(msg))
    raw["body"][name] = {"any": "value"}
    return json.dumps(raw).encode()


def durable(subject: str) -> bool:
    return subject.startswith("segment.")


async def no_redelivery(bus: Any, group_sub: Any) -> None:
    """Nothing comes back, also past the ack wait (JetStream: nothing pending or redelivered)."""
    if hasattr(group_sub, "consumer_info"):
        await asyncio.sleep(bus.ack_wait + 0.5)
    assert await group_sub.next(0.3) is None
    if hasattr(group_sub, "consumer_info"):
        info = await group_sub.consumer_info()
        assert info.num_ack_pending == 0 and info.num_redelivered == 0, info


@pytest.mark.parametrize("subject", ["segment.s", "chat.room"])
async def test_poison_is_counted_and_dead_lettered_once_and_consumers_go_on(make_bus: MakeBus, subject: str) -> None:
    bus = await make_bus(ack_wait=1.0)
    root = subject.split(".")[0]
    first, last = (seg(0), seg(1)) if durable(subject) else (chat(0), chat(1))
    subs = [bus.subscribe(f"{root}.>"), bus.subscribe(subject)]  # two consumers of each message
    group = bus.subscribe(f"{root}.>", group="g") if durable(subject) else None
    await bus.ready()
    cases = poison_cases(encode(last))
    extra = with_extra_field(first)
    poison0 = bus.intake.poison.value(subject=root)
    unknown0 = bus.intake.unknown_fields.value(kind=first.kind)
    since = time.time() - 1
    for data in cases.values():
        await bus.publish_raw(subject, data)
    await bus.publish_raw(subject, extra)  # not poison: a newer sender
    await bus.publish(subject, last)
    for sub in subs + ([group] if group else []):
        got = await take(sub, 2)
        assert [d.message for d in got] == [first, last] and got[0].data == extra
    assert bus.intake.poison.value(subject=root) - poison0 == len(cases)  # once each, not per consumer
    assert bus.intake.unknown_fields.value(kind=first.kind) - unknown0 == 1
    dead = await read_dead_letters(bus, since)
    assert sorted(d.data() for d in dead) == sorted(cases.values())  # once each, the bytes as sent
    assert {d.subject for d in dead} == {subject} and all(d.size == len(d.data()) for d in dead)
    for sub in subs:
        assert await sub.next(0.2) is None
    if group is not None:
        await no_redelivery(bus, group)


async def test_poison_on_a_work_queue_is_terminated_not_redelivered(make_bus: MakeBus) -> None:
    bus = await make_bus(ack_wait=1.0)
    a, b = bus.subscribe("job.>", group="w"), bus.subscribe("job.>", group="w")
    await bus.ready()
    poison0 = bus.intake.poison.value(subject="job")
    for data in poison_cases(encode(seg(5))).values():
        await bus.publish_raw("job.transcode.s", data)
    await bus.publish("job.transcode.s", seg(5))
    d = await a.next(10)
    assert d is not None and d.message == seg(5) and d.attempt == 1
    await d.ack()
    assert bus.intake.poison.value(subject="job") - poison0 == 5
    await no_redelivery(bus, a)
    assert await b.next(0.3) is None


async def test_two_processes_count_once_each_and_dead_letter_once(make_bus: MakeBus) -> None:
    if make_bus.kind == "memory":  # type: ignore[attr-defined]
        pytest.skip("the in-process bus has one process by definition")
    one, two = await make_bus(), await make_bus()  # one deployment (one stream), two processes
    subs = [one.subscribe("segment.>"), two.subscribe("segment.>"),
            one.subscribe("chat.>"), two.subscribe("chat.>")]  # fmt: skip
    await one.ready()
    await two.ready()
    since = time.time() - 1
    before = {r: one.intake.poison.value(subject=r) for r in ("segment", "chat")}
    cases = {"segment.s": poison_cases(encode(seg(1))), "chat.room": poison_cases(encode(chat(1)))}
    for subject, datas in cases.items():
        for data in datas.values():
            await one.publish_raw(subject, data)
    await one.publish("segment.s", seg(1))
    await one.publish("chat.room", chat(1))
    for sub in subs:
        (d,) = await take(sub, 1)
        assert d.message in (seg(1), chat(1))
    for root in ("segment", "chat"):  # both processes share the registry here: once per process
        assert one.intake.poison.value(subject=root) - before[root] == 2 * 5
    dead = await read_dead_letters(one, since)
    for subject, datas in cases.items():
        assert sorted(d.data() for d in dead if d.subject == subject) == sorted(datas.values())


async def test_replay_skips_poison_and_counts_it_once(bus: Any) -> None:
    since = time.time() - 1
    await bus.publish_raw("segment.s", b"{truncated")
    await bus.publish("segment.s", seg(1))
    before = bus.intake.poison.value(subject="segment")
    assert await bus.replay(["segment.s"], since) == [seg(1)]
    assert await bus.replay(["segment.s"], since) == [seg(1)]
    assert bus.intake.poison.value(subject="segment") - before == 1


async def test_an_unknown_field_is_logged_once_per_kind_and_field(bus: Any, caplog: pytest.LogCaptureFixture) -> None:
    sub = bus.subscribe("segment.>")
    await bus.ready()
    with caplog.at_level(logging.WARNING, logger="tidecast.bus"):
        for i in range(3):
            await bus.publish_raw("segment.s", with_extra_field(seg(i), "shiny_new_field"))
        got = await take(sub, 3)
    assert [decode(d.data).sequence for d in got] == [0, 1, 2]  # type: ignore[attr-defined]
    assert len([r for r in caplog.records if "shiny_new_field" in r.getMessage()]) == 1


async def test_a_dead_letter_outlives_the_next_call_that_found_it(make_bus: MakeBus) -> None:
    """The caller's timeout ends next(), not the one publish of a dead letter (NATS: the
    poison was counted as seen, so no later sighting would publish it)."""
    if make_bus.kind == "memory":  # type: ignore[attr-defined]
        pytest.skip("the in-process dead letter is queued at once")
    bus = await make_bus()
    publish_dead = bus._publish_dead

    async def slow_server(subject: str, body: bytes, key: str) -> None:
        await asyncio.sleep(0.5)  # a server slow to confirm
        await publish_dead(subject, body, key)

    bus._publish_dead = slow_server
    sub = bus.subscribe("chat.>")
    await bus.ready()
    since = time.time() - 1
    await bus.publish_raw("chat.room", b"<<garbage>>")
    assert await sub.next(0.2) is None  # ended by its timeout while the dead letter was on its way
    deadline = time.monotonic() + 5
    while not (dead := await read_dead_letters(bus, since)):
        assert time.monotonic() < deadline, "the dead letter never landed"
        await asyncio.sleep(0.1)
    assert [d.data() for d in dead] == [b"<<garbage>>"]
