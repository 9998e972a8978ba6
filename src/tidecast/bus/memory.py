"""MemoryBus: the in-process bus of ``tidecast serve``.

Messages are encoded to their wire form and decoded again on delivery, so a
message that would not survive a real broker fails here too. Delivery is
at-least-once within the process: a ``nak`` redelivers after a delay.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence

from tidecast.bus.base import Delivery
from tidecast.messages import Message, decode, encode

log = logging.getLogger("tidecast.bus")

DURABLE_ROOTS = ("job", "segment", "broadcast", "dead")


def subject_matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


class MemorySubscription:
    def __init__(self, bus: MemoryBus, pattern: str, group: str | None) -> None:
        self.bus = bus
        self.pattern = pattern
        self.group = group
        self.queue: asyncio.Queue[tuple[str, bytes, int] | None] = asyncio.Queue()
        self.closed = False

    def pending(self) -> int:
        return self.queue.qsize()

    def deliver(self, subject: str, data: bytes, attempt: int = 1) -> None:
        self.queue.put_nowait((subject, data, attempt))

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while True:
            item = await self.queue.get()
            if item is None:  # closed
                return
            subject, data, attempt = item
            yield self._delivery(subject, data, attempt)

    def _delivery(self, subject: str, data: bytes, attempt: int) -> Delivery:
        async def ack() -> None:
            return None

        async def nak(delay: float) -> None:
            loop = asyncio.get_running_loop()
            loop.call_later(delay, self.bus._redeliver, self, subject, data, attempt + 1)

        return Delivery(subject, decode(data), attempt, ack, nak)

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.bus._remove(self)
            self.queue.put_nowait(None)


class MemoryBus:
    def __init__(self, history: int = 100_000) -> None:
        self._subs: list[MemorySubscription] = []
        self._rr = itertools.count()
        # durable subjects are kept (bounded) for replay, like a JetStream stream
        self._history: deque[tuple[float, str, bytes]] = deque(maxlen=history)

    async def replay(self, patterns: Sequence[str], since: float) -> list[Message]:
        return [decode(d) for t, s, d in list(self._history)
                if t >= since and any(subject_matches(p, s) for p in patterns)]  # fmt: skip

    async def publish(self, subject: str, message: Message) -> None:
        data = encode(message)
        if subject.split(".", 1)[0] in DURABLE_ROOTS:
            self._history.append((time.time(), subject, data))
        groups: dict[str, list[MemorySubscription]] = {}
        for sub in self._subs:
            if not subject_matches(sub.pattern, subject):
                continue
            if sub.group is None:
                sub.deliver(subject, data)
            else:
                groups.setdefault(sub.group, []).append(sub)
        for members in groups.values():
            members[next(self._rr) % len(members)].deliver(subject, data)

    def subscribe(self, pattern: str, group: str | None = None) -> MemorySubscription:
        sub = MemorySubscription(self, pattern, group)
        self._subs.append(sub)
        return sub

    async def ready(self) -> None:
        """Subscriptions are active as soon as they are made."""

    def _redeliver(self, sub: MemorySubscription, subject: str, data: bytes, attempt: int) -> None:
        target = sub
        if sub.closed and sub.group is not None:
            peers = [s for s in self._subs if s.group == sub.group and s.pattern == sub.pattern]
            if not peers:
                log.warning("dropping redelivery on %s: no consumer left", subject)
                return
            target = peers[0]
        if not target.closed:
            target.deliver(subject, data, attempt)

    def _remove(self, sub: MemorySubscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    async def aclose(self) -> None:
        for sub in list(self._subs):
            await sub.aclose()
