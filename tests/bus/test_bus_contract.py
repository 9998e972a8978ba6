"""One contract, every bus: the in-memory bus and the NATS JetStream bus (real server).

The ``bus`` / ``make_bus`` fixtures (tests/bus/conftest.py) run every test on both."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from typing import Any

import pytest

from tidecast.messages import ChatEvent, Message, SegmentReady

NATS_URL = "nats://127.0.0.1:4222"


def nats_up() -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", 4222)) == 0


def ensure_nats() -> None:
    if nats_up():
        return
    if not shutil.which("start-stop-daemon") or not shutil.os.path.exists("/usr/sbin/nats-server"):  # type: ignore[attr-defined]
        pytest.fail("NATS is not running on :4222 and nats-server is not installed")
    subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/nats-server",
                    "--", "-a", "127.0.0.1", "-p", "4222", "-js", "-sd", "/var/lib/nats-server",
                    "-l", "/var/log/nats-server.log"], check=True)  # fmt: skip
    deadline = time.monotonic() + 10
    while not nats_up() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert nats_up(), "nats-server did not come up"


def seg(i: int) -> SegmentReady:
    return SegmentReady(stream="s", broadcast="b", rendition="720p", sequence=i, start=2.0 * i, duration=2.0,
                        init_key="k/init.mp4", segment_key=f"k/{i:06d}.m4s", size=10, renditions=("720p", "audio"))  # fmt: skip


async def take(sub: Any, n: int, timeout: float = 10, ack: bool = True) -> list[Any]:
    out = []
    async with asyncio.timeout(timeout):
        async for d in sub:
            out.append(d)
            if ack:
                await d.ack()
            if len(out) == n:
                return out
    return out


async def test_typed_messages_round_trip(bus: Any) -> None:
    sub = bus.subscribe("segment.>")
    await bus.ready()
    await bus.publish("segment.s", seg(3))
    (d,) = await take(sub, 1)
    assert d.subject == "segment.s" and d.message == seg(3) and d.attempt == 1


async def test_every_plain_subscriber_gets_everything(bus: Any) -> None:
    a, b = bus.subscribe("segment.>"), bus.subscribe("segment.s")
    await bus.ready()
    for i in range(5):
        await bus.publish("segment.s", seg(i))
    for sub in (a, b):
        assert [d.message.sequence for d in await take(sub, 5)] == list(range(5))


async def test_a_group_shares_the_work_once_each(bus: Any) -> None:
    w1, w2 = bus.subscribe("job.>", group="workers"), bus.subscribe("job.>", group="workers")
    await bus.ready()
    for i in range(20):
        await bus.publish("job.transcode.s", seg(i))
    got: list[int] = []
    all_in = asyncio.Event()

    async def work(sub: Any) -> None:
        async for d in sub:
            got.append(d.message.sequence)
            await d.ack()
            if len(got) >= 20:
                all_in.set()

    tasks = [asyncio.create_task(work(w)) for w in (w1, w2)]
    async with asyncio.timeout(15):
        await all_in.wait()
    await asyncio.sleep(0.5)  # nothing more arrives: no duplicates
    for t in tasks:
        t.cancel()
    assert sorted(got) == list(range(20))


async def test_nak_redelivers_and_counts_attempts(bus: Any) -> None:
    sub = bus.subscribe("job.>", group="retry")
    await bus.ready()
    await bus.publish("job.transcode.s", seg(7))
    attempts = []
    async with asyncio.timeout(15):
        async for d in sub:
            attempts.append(d.attempt)
            if d.attempt < 3:
                await d.nak(0.1)
            else:
                await d.ack()
                break
    assert attempts == [1, 2, 3]


async def test_fan_out_subjects(bus: Any) -> None:
    a, b = bus.subscribe("chat.>"), bus.subscribe("chat.room")
    await bus.ready()
    msg: Message = ChatEvent("room", "node1", {"type": "message", "text": "hi"})
    await bus.publish("chat.room", msg)
    for sub in (a, b):
        (d,) = await take(sub, 1)
        assert d.message == msg
