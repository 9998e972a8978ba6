"""HTTP connection limits: a cap per client address, a global cap, one deadline per request head.

Every connection the HTTP listener accepts is admitted here first
(``ConnectionTable.admit``), whichever protocol serves it — the sendfile fast
path or uvicorn's HTTP protocol (``GuardedHttpTools``). One over a cap gets a
short ``429`` (its address has too many) or ``503`` (the node has too many)
and is closed at once, before anything else is read.

Each connection carries one ``HeadClock``: a request head (request line and
headers) must arrive whole within ``head_timeout`` seconds of its first byte —
for the first request, of the accept — however the bytes trickle in. A
connection that goes past it gets ``408`` and is closed. Slow-header
("slowloris") clients therefore hold a slot for at most that long, and the caps
bound how many slots they can hold at once.

Connections from trusted proxies (an edge keeps many viewers' requests on a few
connections) count towards the global cap only.

A connection leaves the table when its protocol sees it go (``release``); one
that changed protocol on the way (a WebSocket) is dropped from the table once
its transport is closing, looked at whenever a cap is reached.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tidecast.metrics import REGISTRY, Registry
from tidecast.netaddr import TrustedProxies

log = logging.getLogger("tidecast.origin.guard")

PRUNE_EVERY = 0.25  # s: a full sweep for closed transports at most this often


@dataclass(frozen=True, slots=True)
class HTTPLimits:
    max_connections: int = 8192
    max_per_ip: int = 64
    head_timeout: float = 10.0
    proxies: TrustedProxies = field(default_factory=TrustedProxies)


def peer_ip(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "?"


def refusal(status: int, detail: str, retry_after: int = 0) -> bytes:
    """A whole ``Connection: close`` response, written before closing a refused connection."""
    reasons = {408: "Request Timeout", 429: "Too Many Requests", 503: "Service Unavailable"}
    body = json.dumps({"detail": detail}).encode()
    extra = f"retry-after: {retry_after}\r\n" if retry_after else ""
    head = (f"HTTP/1.1 {status} {reasons[status]}\r\nserver: tidecast\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{extra}connection: close\r\n\r\n")  # fmt: skip
    return head.encode() + body


class ConnectionTable:
    """Open HTTP connections by client address, with the two caps."""

    def __init__(self, limits: HTTPLimits, registry: Registry = REGISTRY) -> None:
        self.limits = limits
        self.by_ip: dict[str, set[asyncio.BaseTransport]] = {}
        self.total = 0
        self._pruned_at = 0.0
        self.open = registry.gauge("tidecast_http_connections", "Open HTTP connections (this node).")
        self.refused = registry.counter(
            "tidecast_http_connections_refused_total",
            "HTTP connections closed at accept: over the per-address or the global cap.",
            ("reason",),
        )
        self.head_timeouts = registry.counter(
            "tidecast_http_head_timeouts_total",
            "HTTP connections closed because a request head did not arrive in time.",
        )

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        """Take ``transport`` into the table, or answer it and close it (False)."""
        ip = peer_ip(transport)
        exempt = self.limits.proxies.trusts(ip)
        if self.total >= self.limits.max_connections:
            self._prune_all()
            if self.total >= self.limits.max_connections:
                return self._refuse(transport, "total", 503, "the server has too many connections; try again")
        conns = self.by_ip.get(ip)
        if conns is not None and not exempt and len(conns) >= self.limits.max_per_ip:
            self._prune(ip)
            if len(conns) >= self.limits.max_per_ip:
                return self._refuse(transport, "per_ip", 429, "too many connections from your address")
        self.by_ip.setdefault(ip, set()).add(transport)
        self.total += 1
        self.open.set(self.total)
        return True

    def release(self, transport: asyncio.BaseTransport) -> None:
        """Idempotent: every protocol that served the connection may call it."""
        ip = peer_ip(transport)
        conns = self.by_ip.get(ip)
        if conns is None or transport not in conns:
            return
        conns.discard(transport)
        if not conns:
            del self.by_ip[ip]
        self.total -= 1
        self.open.set(self.total)

    def _prune(self, ip: str) -> None:
        for t in [t for t in self.by_ip.get(ip, ()) if t.is_closing()]:
            self.release(t)

    def _prune_all(self) -> None:
        now = time.monotonic()
        if now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        for ip in list(self.by_ip):
            self._prune(ip)

    def _refuse(self, transport: asyncio.BaseTransport, reason: str, status: int, detail: str) -> bool:
        self.refused.inc(reason=reason)
        assert isinstance(transport, asyncio.Transport)
        try:
            transport.write(refusal(status, detail, retry_after=5))
        finally:
            transport.close()
        return False


class HeadClock:
    """The deadline of one connection's current request head."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, expire: Any) -> None:
        self.loop, self.timeout, self.expire = loop, timeout, expire
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """From now, unless the current head's deadline already runs."""
        if self.timer is None:
            self.timer = self.loop.call_later(self.timeout, self._fire)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    @property
    def running(self) -> bool:
        return self.timer is not None

    def _fire(self) -> None:
        self.timer = None
        self.expire()


def head_expired(table: ConnectionTable | None, transport: asyncio.BaseTransport | None) -> None:
    """A request head came too slowly: answer 408 and close."""
    if transport is None or transport.is_closing():
        return
    if table is not None:
        table.head_timeouts.inc()
    log.debug("closing %s: request head not complete in time", peer_ip(transport))
    assert isinstance(transport, asyncio.Transport)
    transport.write(refusal(408, "the request head did not arrive in time"))
    transport.close()


class GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's HTTP protocol with the caps and the head deadline. The fast path hands
    connections to it already admitted, their head clock running (``adopt``)."""

    table: ConnectionTable | None = None
    head_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock: HeadClock | None = None
        self.adopted = False

    def adopt(self, clock: HeadClock) -> None:
        self.adopted = True
        self.clock = clock
        clock.expire = lambda: head_expired(self.table, self.transport)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.adopted:
            if self.table is not None and not self.table.admit(transport):
                return
            self.clock = HeadClock(self.loop, self.head_timeout, lambda: head_expired(self.table, transport))
            self.clock.start()  # the first request's head counts from the accept

    def connection_lost(self, exc: Exception | None) -> None:
        if self.clock is not None:
            self.clock.stop()
        if self.table is not None and self.transport is not None:
            self.table.release(self.transport)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.clock is not None:
            self.clock.start()

    def on_headers_complete(self) -> None:
        if self.clock is not None:
            self.clock.stop()
        super().on_headers_complete()


def guarded_http(table: ConnectionTable | None, head_timeout: float) -> type[GuardedHttpTools]:
    """The app's HTTP protocol class for one listener."""

    class Protocol(GuardedHttpTools):
        pass

    Protocol.table = table
    Protocol.head_timeout = head_timeout
    return Protocol
