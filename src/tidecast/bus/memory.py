"""MemoryBus: the in-process bus of ``tidecast serve``.

Messages are encoded to their wire form and decoded again on delivery, so a
message that would not survive a real broker fails here too. Delivery is
at-least-once within the process: a ``nak`` redelivers after a delay.

Fan-out subscribers each have their own queue. A work-queue group has one
shared queue that its members pull from (``next``), one message at a time,
so a busy member never holds messages another member could take.
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


_Item = tuple[str, bytes, int]  # subject, data, attempt


class _Group:
    """The shared queue of one work-queue group on one pattern."""

    def __init__(self, name: str, pattern: str) -> None:
        self.name = name
        self.pattern = pattern
        self.items: deque[_Item] = deque()
        self.members: list[MemorySubscription] = []
        self.wakeup = asyncio.Event()

    def put(self, item: _Item) -> None:
        self.items.append(item)
        self.wakeup.set()


class MemorySubscription:
    def __init__(self, bus: MemoryBus, pattern: str, group: str | None) -> None:
        self.bus = bus
        self.pattern = pattern
        self.group = group
        self.queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self.closed = False
        self._group: _Group | None = None

    def pending(self) -> int:
        if self._group is not None:
            return len(self._group.items)
        return self.queue.qsize()

    def deliver(self, subject: str, data: bytes, attempt: int = 1) -> None:
        self.queue.put_nowait((subject, data, attempt))

    async def next(self, timeout: float | None = None) -> Delivery | None:
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        while not self.closed:
            item: _Item | None
            if self._group is not None:
                g = self._group
                if g.items:
                    item = g.items.popleft()
                else:
                    g.wakeup.clear()
                    left = None if end is None else end - loop.time()
                    if left is not None and left <= 0:
                        return None
                    try:
                        await asyncio.wait_for(g.wakeup.wait(), left)
                    except TimeoutError:
                        return None
                    continue
            else:
                left = None if end is None else max(0.0, end - loop.time())
                try:
                    item = await asyncio.wait_for(self.queue.get(), left)
                except TimeoutError:
                    return None
                if item is None:
                    return None
            delivery = self._delivery(*item)
            if delivery is not None:
                return delivery
        return None

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while True:
            d = await self.next()
            if d is None:
                return
            yield d

    def _delivery(self, subject: str, data: bytes, attempt: int) -> Delivery | None:
        async def ack() -> None:
            return None

        async def nak(delay: float) -> None:
            loop = asyncio.get_running_loop()
            loop.call_later(delay, self.bus._redeliver, self, subject, data, attempt + 1)

        return Delivery(subject, decode(data), attempt, ack, nak, None, ack, data)

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.bus._remove(self)
            self.queue.put_nowait(None)
            if self._group is not None:
                self._group.wakeup.set()


class MemoryBus:
    def __init__(self, history: int = 100_000) -> None:
        self._subs: list[MemorySubscription] = []
        self._groups: dict[tuple[str, str], _Group] = {}
        self._rr = itertools.count()
        # durable subjects are kept (bounded) for replay, like a JetStream stream
        self._history: deque[tuple[float, str, bytes]] = deque(maxlen=history)

    async def replay(self, patterns: Sequence[str], since: float) -> list[Message]:
        return [decode(d) for t, s, d in list(self._history)
                if t >= since and any(subject_matches(p, s) for p in patterns)]  # fmt: skip

    async def publish(self, subject: str, message: Message) -> None:
        await self.publish_raw(subject, encode(message))

    async def publish_raw(self, subject: str, data: bytes) -> None:
        if subject.split(".", 1)[0] in DURABLE_ROOTS:
            self._history.append((time.time(), subject, data))
        for sub in self._subs:
            if sub.group is None and subject_matches(sub.pattern, subject):
                sub.deliver(subject, data)
        for g in self._groups.values():
            if subject_matches(g.pattern, subject):
                g.put((subject, data, 1))

    def subscribe(self, pattern: str, group: str | None = None) -> MemorySubscription:
        sub = MemorySubscription(self, pattern, group)
        if group is not None:
            g = self._groups.get((group, pattern))
            if g is None:
                g = self._groups[(group, pattern)] = _Group(group, pattern)
            g.members.append(sub)
            sub._group = g
        self._subs.append(sub)
        return sub

    async def ready(self) -> None:
        """Subscriptions are active as soon as they are made."""

    def _redeliver(self, sub: MemorySubscription, subject: str, data: bytes, attempt: int) -> None:
        if sub._group is not None:
            if not sub._group.members:
                log.warning("dropping redelivery on %s: no consumer left", subject)
                return
            sub._group.put((subject, data, attempt))
        elif not sub.closed:
            sub.deliver(subject, data, attempt)

    def _remove(self, sub: MemorySubscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        if sub._group is not None and sub in sub._group.members:
            sub._group.members.remove(sub)

    async def aclose(self) -> None:
        for sub in list(self._subs):
            await sub.aclose()
