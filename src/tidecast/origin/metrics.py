"""``GET /metrics`` (Prometheus text format) and what feeds it from the bus.

Transcode backpressure is measured by the segmenter (on the ingest side) and
reported as ``TranscodeLag`` on ``event.transcode.<stream>``; ``MetricsListener``
turns those reports into metrics wherever the HTTP app runs — in ``tidecast
serve`` over the in-process bus, in the origin role over NATS — so the numbers
come from the same messages in both deployments.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Response

from tidecast.bus.base import Bus, Delivery, Subscription
from tidecast.bus.consumer import consume
from tidecast.messages import TranscodeLag
from tidecast.metrics import CONTENT_TYPE, REGISTRY, Registry
from tidecast.supervise import Supervisor


def metrics_router(registry: Registry = REGISTRY, dependencies: Sequence[Any] = ()) -> APIRouter:
    """``GET /metrics``; ``dependencies`` guard it (the admin token on the main port)."""
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False, dependencies=list(dependencies))
    async def metrics() -> Response:
        return Response(registry.render(), headers={"content-type": CONTENT_TYPE})

    return router


class TranscodeMetrics:
    """The transcode backpressure metrics, from ``TranscodeLag`` reports."""

    def __init__(self, registry: Registry = REGISTRY, remember: int = 10_000) -> None:
        self.lag = registry.gauge(
            "tidecast_transcode_lag_seconds",
            "Age of the oldest transcode job of the stream not fully encoded yet.",
            ("stream",),
        )
        self.skipped = registry.gauge(
            "tidecast_transcode_skipped_rungs",
            "Top ladder rungs new segments of the stream skip because transcoding lags.",
            ("stream",),
        )
        self.degraded = registry.counter(
            "tidecast_degraded_segments_total",
            "Segments published without some of their top rungs (backpressure).",
            ("stream",),
        )
        self.remember = remember
        # (stream, broadcast, part) -> degraded segments already counted
        self._counted: OrderedDict[tuple[str, str, int], int] = OrderedDict()

    def observe(self, msg: TranscodeLag) -> None:
        self.lag.set(msg.lag_seconds, stream=msg.stream)
        self.skipped.set(len(msg.skipped), stream=msg.stream)
        key = (msg.stream, msg.broadcast, msg.part)
        counted = self._counted.pop(key, 0)
        if msg.degraded_segments > counted:  # reports carry the session's running total
            self.degraded.inc(msg.degraded_segments - counted, stream=msg.stream)
        self._counted[key] = max(counted, msg.degraded_segments)
        while len(self._counted) > self.remember:
            self._counted.popitem(last=False)


class MetricsListener:
    """Feeds ``TranscodeMetrics`` from ``event.transcode.>`` (every report, every node)."""

    def __init__(self, bus: Bus, registry: Registry = REGISTRY) -> None:
        self.bus = bus
        self.transcode = TranscodeMetrics(registry)
        self._sub: Subscription | None = None
        self.sup = Supervisor("metrics")

    def start(self) -> None:
        sub = self._sub = self.bus.subscribe("event.transcode.>")
        self.sup.spawn("metrics-listener", lambda: consume(sub, self._on_report, bus=self.bus, name="metrics"))

    async def _on_report(self, delivery: Delivery) -> None:
        if isinstance(delivery.message, TranscodeLag):
            self.transcode.observe(delivery.message)

    async def aclose(self) -> None:
        if self._sub is not None:
            await self._sub.aclose()
        await self.sup.aclose()
