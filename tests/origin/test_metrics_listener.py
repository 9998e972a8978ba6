"""Backpressure metrics from the segmenter's lag reports, over the real in-process
bus, served at GET /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
from fastapi import FastAPI

from tidecast.bus.memory import MemoryBus
from tidecast.messages import TranscodeLag
from tidecast.metrics import Registry
from tidecast.origin.metrics import MetricsListener, metrics_router


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "the listener never caught up"
        await asyncio.sleep(0.01)


async def test_listener_turns_lag_reports_into_metrics() -> None:
    bus, reg = MemoryBus(), Registry()
    listener = MetricsListener(bus, reg)
    listener.start()
    m = listener.transcode
    try:
        await bus.publish("event.transcode.main", TranscodeLag("main", "b1", 0.4))
        await bus.publish("event.transcode.main",
                          TranscodeLag("main", "b1", 9.5, ("720p",), degraded_segments=1, changed=True))  # fmt: skip
        await bus.publish("event.transcode.main",
                          TranscodeLag("main", "b1", 11.0, ("720p", "480p"), degraded_segments=2, changed=True))  # fmt: skip
        await until(lambda: m.degraded.value(stream="main") == 2)
        assert m.lag.value(stream="main") == 11.0
        assert m.skipped.value(stream="main") == 2
        assert m.degraded.value(stream="main") == 2
        # a repeated report counts nothing twice; the session's end clears the gauges
        await bus.publish("event.transcode.main",
                          TranscodeLag("main", "b1", 0.0, (), degraded_segments=2, changed=True))  # fmt: skip
        # a reconnect (part 1) counts from 0 again, on top of what part 0 had
        await bus.publish("event.transcode.main",
                          TranscodeLag("main", "b1", 9.0, ("720p",), degraded_segments=1, part=1))  # fmt: skip
        await bus.publish("event.transcode.other", TranscodeLag("other", "b2", 1.0))
        await until(lambda: m.lag.value(stream="other") == 1.0)
        assert m.degraded.value(stream="main") == 3
        assert m.skipped.value(stream="main") == 1 and m.lag.value(stream="main") == 9.0
        assert m.lag.value(stream="other") == 1.0 and m.degraded.value(stream="other") == 0

        app = FastAPI()
        app.include_router(metrics_router(reg))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        lines = r.text.splitlines()
        assert 'tidecast_degraded_segments_total{stream="main"} 3' in lines
        assert 'tidecast_transcode_lag_seconds{stream="other"} 1' in lines
        assert 'tidecast_transcode_skipped_rungs{stream="main"} 1' in lines
        assert "# TYPE tidecast_degraded_segments_total counter" in lines
    finally:
        await listener.aclose()
        await bus.aclose()
