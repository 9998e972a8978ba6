"""The asyncio RTMP server over real sockets, with the real gate, segmenter, local store
(SQLite database, in-process bus): segment limits, backpressure, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rtmpclient import Client, Reply, avc_nalu, avc_sequence_header

from tidecast.bus.memory import MemoryBus
from tidecast.db.repo import Database
from tidecast.ingest.rtmp.server import RTMPServer
from tidecast.ingest.sessions import PublishGate
from tidecast.messages import BroadcastEnded
from tidecast.metrics import Registry
from tidecast.segmenter.service import SegmenterService
from tidecast.store.local import LocalStore

# a real 320x240 Baseline AVCDecoderConfigurationRecord (the segmenter parses it)
AVCC = bytes.fromhex("0142c00dffe100166742c00dda0507ec0440000003004000000c83c50aa801000468ce0fc8")


class HeldStore(LocalStore):
    """A local store whose writes wait until ``release`` is set."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.release = asyncio.Event()

    async def put(self, key: str, data: bytes) -> None:
        await self.release.wait()
        await super().put(key, data)


@dataclass
class Ingest:
    key: str
    bus: MemoryBus
    segmenter: SegmenterService
    gate: PublishGate
    server: RTMPServer
    store: LocalStore
    registry: Registry
    publishers: list[Publisher]

    async def publish(self) -> Publisher:
        pub = await Publisher.connect(self.server.port, self.key)
        self.publishers.append(pub)
        return pub


@contextlib.asynccontextmanager
async def ingest(tmp_path: Path, store: LocalStore | None = None, *, shutdown_timeout: float = 10.0,
                 **limits: Any) -> AsyncIterator[Ingest]:  # fmt: skip
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    key = db.create_stream("s").key
    bus, reg = MemoryBus(), Registry()
    store = store or LocalStore(tmp_path / "media")
    svc = SegmenterService(store, bus, 2.0, registry=reg, **limits)
    gate = PublishGate(db, svc, bus, reconnect_grace=0)
    server = RTMPServer(gate, "127.0.0.1", 0, shutdown_timeout=shutdown_timeout)
    await server.start()
    i = Ingest(key, bus, svc, gate, server, store, reg, [])
    try:
        yield i
    finally:
        for pub in i.publishers:
            pub.writer.close()
            with contextlib.suppress(ConnectionError):
                await pub.writer.wait_closed()
        await server.aclose()
        await gate.aclose()
        await svc.aclose()
        db.close()


class Publisher:
    """A raw RTMP publisher on a real socket (bytes from the test client)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.client = Client()
        self.replies: list[Reply] = []

    @classmethod
    async def connect(cls, port: int, key: str) -> Publisher:
        p = cls(*await asyncio.open_connection("127.0.0.1", port))
        p.send(p.client.publish_prefix(key))
        p.send(p.client.video(1, 0, avc_sequence_header(AVCC)))
        await p.status("NetStream.Publish.Start")
        return p

    def send(self, data: bytes) -> None:
        self.writer.write(data)  # buffered: the test sees when the server stops reading

    def frame(self, ts: int, keyframe: bool, data: bytes = b"\x00\x00\x00\x02\x41\x9a") -> None:
        self.send(self.client.video(1, ts, avc_nalu(data, keyframe=keyframe)))

    async def status(self, code: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.replies:
                if r.name == "onStatus" and r.values and r.values[3]["code"] == code:
                    return dict(r.values[3])
            try:
                data = await asyncio.wait_for(self.reader.read(65536), 0.2)
            except TimeoutError:
                continue
            if not data:
                break
            self.replies += self.client.receive(data)
        raise AssertionError(f"no onStatus {code}; got {[r.values for r in self.replies]}")

    async def closed_by_server(self, timeout: float = 10.0) -> bool:
        try:
            async with asyncio.timeout(timeout):
                while data := await self.reader.read(65536):
                    self.replies += self.client.receive(data)
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True


async def ended(bus_sub: Any, timeout: float = 5.0) -> BroadcastEnded:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = await bus_sub.next(timeout=0.1)
        if d is not None and isinstance(d.message, BroadcastEnded):
            return d.message
    raise AssertionError("no BroadcastEnded")


async def eventually(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait (at most ``timeout``) until ``predicate()`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)


def server_connection(i: Ingest) -> Any:
    (conn,) = i.server._conns.values()
    return conn


async def test_a_publisher_past_the_maximum_segment_duration_is_refused_and_disconnected(tmp_path: Path) -> None:
    async with ingest(tmp_path, max_segment_duration=5.0) as i:
        ends = i.bus.subscribe("broadcast.s")
        pub = await i.publish()
        for n in range(4 * 30):  # 4 s, a keyframe every 2 s: segment 0 is cut
            pub.frame(n * 33, keyframe=n % 60 == 0)
        for n in range(4 * 30, 12 * 30):  # then only inter frames
            pub.frame(n * 33, keyframe=False)
        status = await pub.status("NetStream.Publish.Rejected")
        assert status["level"] == "error"
        assert status["description"] == ("no keyframe for 5.0 s (a segment may last at most 5 s): "
                                         "set the encoder's keyframe interval to 2 s")  # fmt: skip
        assert await pub.closed_by_server()
        end = await ended(ends)
        assert end.reason.startswith("publish rejected: no keyframe for 5.0 s")
        assert end.segments == 1  # segment 0 is kept; the over-long one is not
        assert (i.store.root / "hls/s" / end.broadcast / "source/000000.m4s").is_file()
        assert i.server.stats.refused == 1 and "s" not in i.gate.sessions
        refused = i.registry.counter("tidecast_ingest_publishers_refused_total", "", ("stream", "limit"))
        assert refused.value(stream="s", limit="duration") == 1


async def test_huge_frames_are_refused_at_the_maximum_segment_size(tmp_path: Path) -> None:
    async with ingest(tmp_path, max_segment_bytes=1 << 20) as i:
        pub = await i.publish()
        for n in range(8):
            pub.frame(n * 33, keyframe=n == 0, data=b"\x00\x04\x93\xe0" + b"\x41" * 300_000)
        status = await pub.status("NetStream.Publish.Rejected")
        assert status["description"].startswith("a segment grew past 1 MiB")
        assert await pub.closed_by_server()


async def test_video_that_never_has_a_keyframe_is_refused(tmp_path: Path) -> None:
    async with ingest(tmp_path) as i:  # the default limit: 20 s of media
        pub = await i.publish()
        for n in range(21 * 30):
            pub.frame(n * 33, keyframe=False)
        status = await pub.status("NetStream.Publish.Rejected")
        assert status["description"] == ("no keyframe in the first 20.0 s: "
                                         "set the encoder's keyframe interval to 2 s")  # fmt: skip
        assert await pub.closed_by_server()


async def test_backpressure_stops_reading_the_publisher_until_the_store_catches_up(tmp_path: Path) -> None:
    store = HeldStore(tmp_path / "media")
    async with ingest(tmp_path, store, queue_segments=2) as i:
        pub = await i.publish()
        payload = b"\x00\x00\x27\x10" + b"\x41" * 10_000
        for n in range(60 * 30):  # 60 s of 2.4 Mbps video, a keyframe every 2 s: 18 MB
            pub.frame(n * 33, keyframe=n % 60 == 0, data=payload)
        conn = server_connection(i)
        sink = i.gate.sessions["s"].sink
        await eventually(sink.full)
        assert sink.full()
        await asyncio.sleep(0.2)
        got = conn.conn.bytes_received
        await asyncio.sleep(0.5)
        assert conn.conn.bytes_received == got, "the server kept reading a held publisher"
        assert pub.writer.transport.get_write_buffer_size() > 0  # TCP pushed back on it
        assert len(sink.queue) <= 3
        store.release.set()
        await pub.writer.drain()
        await eventually(lambda: conn.conn.bytes_received > got + 10_000_000, 15)
        assert conn.conn.bytes_received > got + 10_000_000  # read again, all of it
        waited = i.registry.counter("tidecast_ingest_backpressure_seconds_total", "", ("stream",))
        assert waited.value(stream="s") >= 0.7


async def test_a_publisher_held_past_the_deadline_gets_a_clear_error(tmp_path: Path) -> None:
    store = HeldStore(tmp_path / "media")
    async with ingest(tmp_path, store, queue_segments=2, backpressure_deadline=0.5, finish_timeout=0.5) as i:
        pub = await i.publish()
        for n in range(20 * 30):
            pub.frame(n * 33, keyframe=n % 60 == 0)
        status = await pub.status("NetStream.Publish.Rejected")
        assert status["description"].startswith("the server could not store this stream for 0.5 s")
        assert await pub.closed_by_server()
        store.release.set()


async def test_shutdown_with_a_live_publisher_logs_no_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with ingest(tmp_path) as i:
        ends = i.bus.subscribe("broadcast.s")
        pub = await i.publish()
        for n in range(3 * 30):
            pub.frame(n * 33, keyframe=n % 60 == 0)
        await pub.writer.drain()
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        await i.server.aclose()
        assert time.monotonic() - t0 < 2
        assert (await ended(ends)).reason == "server shutdown"
        assert await pub.closed_by_server()
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == [], [r.getMessage() for r in errors]
    assert "CancelledError" not in caplog.text and "Traceback" not in caplog.text


async def test_shutdown_ends_a_backpressure_wait(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = HeldStore(tmp_path / "media")
    async with ingest(tmp_path, store, queue_segments=2, finish_timeout=0.3) as i:
        pub = await i.publish()
        for n in range(20 * 30):
            pub.frame(n * 33, keyframe=n % 60 == 0)
        sink = i.gate.sessions["s"].sink
        await eventually(sink.full)
        assert sink.full()
        t0 = time.monotonic()
        await i.server.aclose()  # the connection stops without being cancelled
        assert time.monotonic() - t0 < 2
        assert not [r for r in caplog.records if r.name == "asyncio"]
        assert "cancelling it" not in caplog.text
        store.release.set()
