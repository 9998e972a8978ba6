"""PublishGate as the node's LiveStatus, and its grace timers (real SQLite database,
local store, in-process bus)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from tidecast.bus.memory import MemoryBus
from tidecast.db.playback import Playback
from tidecast.db.repo import Database
from tidecast.ingest.sessions import PublishGate
from tidecast.live import LiveBroadcast, LiveStatus, live_broadcast_ids
from tidecast.messages import BroadcastFinished
from tidecast.metrics import Registry
from tidecast.segmenter.service import SegmenterService
from tidecast.store.local import LocalStore


def make(tmp_path: Path, grace: float) -> tuple[PublishGate, str, MemoryBus]:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    key = db.create_stream("s").key
    bus = MemoryBus()
    svc = SegmenterService(LocalStore(tmp_path / "media"), bus, 2.0, registry=Registry())
    return PublishGate(db, svc, bus, reconnect_grace=grace), key, bus


async def eventually(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait (at most ``timeout``) until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)


async def test_live_and_paused_broadcasts_are_the_gates_live_status(tmp_path: Path) -> None:
    gate, key, bus = make(tmp_path, grace=0.3)
    finished = bus.subscribe("broadcast.s")
    status: LiveStatus = gate  # the Protocol the origin and chat code against
    assert status.live() == {}
    session = await gate.open(key, "127.0.0.1:1", "rtmp")
    session.video, session.audio = "avc1.42c00d 320x240", "mp4a.40.2 48000 Hz 2 ch"
    live = status.live()
    assert live == {"s": LiveBroadcast("s", session.broadcast, session.started_at,
                                       session.video, session.audio)}  # fmt: skip
    assert live_broadcast_ids(status) == {session.broadcast}
    assert gate.sessions["s"] is session
    await gate.close(session, "unpublished")
    paused = status.live()["s"]
    assert paused.paused and paused.broadcast == session.broadcast
    assert paused.video == session.video and paused.audio == session.audio
    assert gate.supervisor.running(gate.grace_task("s"))  # the grace timer is supervised
    await eventually(lambda: not status.live())
    assert status.live() == {}
    msgs = []
    while (d := await finished.next(timeout=0.1)) is not None:
        msgs.append(d.message)
    assert [m.reason for m in msgs if isinstance(m, BroadcastFinished)] == ["unpublished"]
    assert not gate.supervisor.running(gate.grace_task("s"))
    await gate.aclose()


async def test_a_resumed_broadcast_cancels_its_timer_and_shutdown_finishes_the_paused(tmp_path: Path) -> None:
    gate, key, bus = make(tmp_path, grace=30)
    finished = bus.subscribe("broadcast.s")
    first = await gate.open(key, "127.0.0.1:1", "rtmp")
    await gate.close(first, "unpublished")
    timer = gate.paused["s"].timer
    second = await gate.open(key, "127.0.0.1:2", "rtmp")
    assert second.broadcast == first.broadcast and second.part == 1
    assert timer.cancelled() and not gate.supervisor.running(gate.grace_task("s"))
    await gate.close(second, "unpublished")
    t0 = time.monotonic()
    await gate.aclose()  # does not wait out the 30 s grace
    assert time.monotonic() - t0 < 2 and gate.live() == {}
    msgs = []
    while (d := await finished.next(timeout=0.1)) is not None:
        msgs.append(d.message)
    assert [m.reason for m in msgs if isinstance(m, BroadcastFinished)] == ["server shutdown"]


async def test_each_broadcast_gets_the_latency_of_its_stream(tmp_path: Path) -> None:
    """On a low-latency node: parts for a stream that follows the node; none for one set
    to "standard" or encrypted (AES-128 encrypts whole segments)."""
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    keys = {name: db.create_stream(name).key for name in ("ll", "std", "enc")}
    Playback(db).set_policy("std", latency="standard")
    Playback(db).set_policy("enc", access="token", encryption="aes-128")
    svc = SegmenterService(LocalStore(tmp_path / "media"), MemoryBus(), 2.0, registry=Registry(),
                           part_target=1 / 3)  # fmt: skip
    gate = PublishGate(db, svc, MemoryBus(), reconnect_grace=0)
    got = {}
    for name, key in keys.items():
        session = await gate.open(key, f"127.0.0.1:{len(got) + 1}", "rtmp")
        got[name] = session.sink.part_target
        await gate.close(session, "unpublished")
    assert got == {"ll": 1 / 3, "std": 0.0, "enc": 0.0}
    await svc.aclose()
