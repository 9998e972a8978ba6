"""MemoryBus: the in-process bus of ``tidecast serve``.

Messages are encoded to their wire form and decoded again on delivery, so a
message that would not survive a real broker fails here too: bytes that are
not a message are screened out (``bus.intake``: logged, counted once, copied
to ``dead.<subject>``, dropped) and the subscription goes on. Delivery is
at-least-once within the process: a ``nak`` redelivers after a delay.

Fan-out subscribers each have their own queue. A work-queue group has one
shared queue that its members pull from (``next``), one message at a time,
so a busy member never holds messages another member could take.

Every queue holds at most ``bound`` messages. On the durable roots (job,
segment, broadcast, dead) a publish waits until every queue it goes to has
room, up to ``publish_timeout`` seconds, then raises ``BusFull`` (counted);
nothing is delivered then, to anyone. On the other roots (chat, event) a full
queue drops its oldest message (counted). A redelivery (``nak``) is always
taken back: it was admitted once already.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence

from tidecast.bus.base import (
    DEAD_ROOT,
    DURABLE_ROOTS,
    BusFull,
    Delivery,
    dead_subject,
    is_durable,
    subject_root,
)
from tidecast.bus.intake import Intake, Poison, dead_letter
from tidecast.messages import Message, encode

log = logging.getLogger("tidecast.bus")

__all__ = ["DURABLE_ROOTS", "MemoryBus", "MemorySubscription", "subject_matches"]

DROP_LOG_EVERY = 1000  # a queue that keeps overflowing logs its first drop, then one in this many


def subject_matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


_Item = tuple[str, bytes, int, int]  # subject, data, attempt, publish sequence


class _Queue:
    """The bounded queue of one fan-out subscription, or the shared queue of one group."""

    def __init__(self, bus: MemoryBus, pattern: str, name: str) -> None:
        self.bus = bus
        self.pattern = pattern
        self.name = name  # what dead letters and log lines call this consumer
        self.items: deque[_Item] = deque()
        self.members: list[MemorySubscription] = []
        self.wakeup = asyncio.Event()
        self.drops = 0

    def has_room(self) -> bool:
        return len(self.items) < self.bus.bound

    def put(self, item: _Item) -> None:
        """Queue ``item``; on a non-durable subject a full queue drops its oldest
        non-durable message (or, holding only durable ones, ``item`` itself)."""
        if len(self.items) >= self.bus.bound and not is_durable(item[0]):
            victim = next((i for i, it in enumerate(self.items) if not is_durable(it[0])), None)
            dropped = item if victim is None else self.items[victim]
            if victim is not None:
                del self.items[victim]
            self.bus.intake.drop(dropped[0], "overflow")
            self.drops += 1
            if self.drops % DROP_LOG_EVERY == 1:
                log.warning("%s: queue full (%d); dropped the oldest message on %s (%d dropped so far)",
                            self.name, self.bus.bound, dropped[0], self.drops)  # fmt: skip
            if victim is None:
                return
        self.items.append(item)
        self.wakeup.set()

    def take(self) -> _Item | None:
        if not self.items:
            return None
        item = self.items.popleft()
        self.bus._room.set()
        return item


class MemorySubscription:
    def __init__(self, bus: MemoryBus, pattern: str, group: str | None, queue: _Queue) -> None:
        self.bus = bus
        self.pattern = pattern
        self.group = group
        self.closed = False
        self._queue = queue
        self._group = queue if group is not None else None

    def pending(self) -> int:
        return len(self._queue.items)

    async def next(self, timeout: float | None = None) -> Delivery | None:
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        q = self._queue
        while not self.closed:
            item = q.take()
            if item is None:
                q.wakeup.clear()
                left = None if end is None else end - loop.time()
                if left is not None and left <= 0:
                    return None
                try:
                    await asyncio.wait_for(q.wakeup.wait(), left)
                except TimeoutError:
                    return None
                continue
            delivery = await self._delivery(*item)
            if delivery is not None:
                return delivery
        return None

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while True:
            d = await self.next()
            if d is None:
                return
            yield d

    async def _delivery(self, subject: str, data: bytes, attempt: int, seq: int) -> Delivery | None:
        got = self.bus.intake.screen(subject, data, key=lambda: str(seq))
        if isinstance(got, Poison):
            if got.first:
                await self.bus._dead_letter(subject, data, got.reason, self._queue.name)
            return None  # dropped: a poison message is never redelivered

        async def ack() -> None:
            return None

        async def nak(delay: float) -> None:
            self.bus._later(delay, self, (subject, data, attempt + 1, seq))

        return Delivery(subject, got, attempt, ack, nak, None, ack, data)

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.bus._remove(self)
            self._queue.wakeup.set()
            if self._group is None:
                self._queue.items.clear()
            self.bus._room.set()


class MemoryBus:
    def __init__(
        self, history: int = 100_000, *, bound: int = 10_000, publish_timeout: float = 30.0,
        intake: Intake | None = None,
    ) -> None:  # fmt: skip
        if bound < 1 or publish_timeout < 0:
            raise ValueError(f"bad bus bounds: bound={bound} publish_timeout={publish_timeout}")
        self.bound = bound
        self.publish_timeout = publish_timeout
        self.intake = intake or Intake()
        self._subs: list[MemorySubscription] = []
        self._fanout: dict[MemorySubscription, _Queue] = {}
        self._groups: dict[tuple[str, str], _Queue] = {}
        self._seq = itertools.count(1)
        self._room = asyncio.Event()  # set whenever a queue gives up a message
        self._timers: set[asyncio.TimerHandle] = set()  # redeliveries to come (nak with a delay)
        # durable subjects are kept (bounded) for replay, like a JetStream stream
        self._history: deque[tuple[float, str, bytes, int]] = deque(maxlen=history)

    async def replay(self, patterns: Sequence[str], since: float) -> list[Message]:
        out: list[Message] = []
        for t, s, d, seq in list(self._history):
            if t >= since and any(subject_matches(p, s) for p in patterns):
                got = self.intake.screen(s, d, key=functools.partial(str, seq))
                if not isinstance(got, Poison):
                    out.append(got)
        return out

    async def publish(self, subject: str, message: Message) -> None:
        await self.publish_raw(subject, encode(message))

    def _targets(self, subject: str) -> list[_Queue]:
        out = [q for q in self._fanout.values() if subject_matches(q.pattern, subject)]
        out += [g for g in self._groups.values() if subject_matches(g.pattern, subject)]
        return out

    async def publish_raw(self, subject: str, data: bytes) -> None:
        targets = self._targets(subject)
        if is_durable(subject):
            loop = asyncio.get_running_loop()
            end = loop.time() + self.publish_timeout
            while not all(q.has_room() for q in targets):
                left = end - loop.time()
                self._room.clear()
                try:
                    if left <= 0:
                        raise TimeoutError
                    await asyncio.wait_for(self._room.wait(), left)
                except TimeoutError:
                    self.intake.full.inc(subject=subject_root(subject))
                    full = [q.name for q in targets if not q.has_room()]
                    raise BusFull(f"publish on {subject}: {', '.join(full)} stayed full "
                                  f"({self.bound} messages) for {self.publish_timeout:g} s") from None  # fmt: skip
                targets = self._targets(subject)  # subscriptions may have come or gone
        seq = next(self._seq)
        if is_durable(subject):
            self._history.append((time.time(), subject, data, seq))
        for q in targets:
            q.put((subject, data, 1, seq))

    def subscribe(self, pattern: str, group: str | None = None) -> MemorySubscription:
        if group is not None:
            q = self._groups.get((group, pattern))
            if q is None:
                q = self._groups[(group, pattern)] = _Queue(self, pattern, f"group {group} on {pattern}")
            sub = MemorySubscription(self, pattern, group, q)
            q.members.append(sub)
        else:
            q = _Queue(self, pattern, f"subscriber of {pattern}")
            sub = MemorySubscription(self, pattern, None, q)
            q.members.append(sub)
            self._fanout[sub] = q
        self._subs.append(sub)
        return sub

    async def ready(self, timeout: float = 30.0) -> None:
        """Subscriptions are active as soon as they are made."""

    async def _dead_letter(self, subject: str, data: bytes, reason: str, consumer: str) -> None:
        if subject_root(subject) == DEAD_ROOT:
            return  # a dead letter that is itself not a message: counted and dropped
        try:
            await self.publish_raw(dead_subject(subject), encode(dead_letter(subject, data, reason, consumer)))
        except BusFull:
            self.intake.dead_failures.inc(subject=subject_root(subject))
            log.exception("could not dead-letter a message on %s", subject)

    def _later(self, delay: float, sub: MemorySubscription, item: _Item) -> None:
        def fire() -> None:
            self._timers.discard(handle)
            self._redeliver(sub, item)

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)

    def _redeliver(self, sub: MemorySubscription, item: _Item) -> None:
        q = sub._queue
        if not q.members:
            self.intake.drop(item[0], "no_consumer")
            log.warning("dropping redelivery on %s: no consumer left", item[0])
            return
        q.items.append(item)  # taken back even when full: it was admitted once
        q.wakeup.set()

    def _remove(self, sub: MemorySubscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        if sub in sub._queue.members:
            sub._queue.members.remove(sub)
        self._fanout.pop(sub, None)

    async def aclose(self) -> None:
        for handle in self._timers:  # nobody is left to take them
            handle.cancel()
        self._timers.clear()
        for sub in list(self._subs):
            await sub.aclose()
