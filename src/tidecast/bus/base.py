"""The Bus interface: publish typed messages to subjects, consume with ack/nak/term.

Two ways to consume:

- **Fan-out** (``subscribe(pattern)``, no group): every subscriber gets every
  message; iterate with ``async for``.
- **Work queue** (``subscribe(pattern, group=...)``): the members of a group
  share the messages, each to one member. Members *pull*: ``await sub.next()``
  takes one message when the member has room for it, so a member never holds
  more unacknowledged messages than it has asked for (no prefetch). ``async
  for`` on a group subscription pulls one message per iteration.

Settling: ``ack`` when done, ``nak(delay)`` to have it again (a group hands it
to any member; on NATS a fan-out subscription has no redelivery, ``nak`` there
does nothing), ``term`` to drop it for good. Every wait ends: ``next`` at its
``timeout`` (or when the subscription closes, with None), ``ready`` at its
deadline (``BusNotReady``), a publish held back by a full queue at the bus's
deadline (``BusFull``).

A message that cannot be decoded (``messages.MessageError``) never reaches a
consumer: the subscription logs it (subject and a short excerpt), counts it
(``tidecast_bus_poison_messages_total{subject}``), copies it to
``dead.<subject>`` as a ``DeadLetter`` and terminates it (never redelivered),
then goes on with the next message. Several subscriptions of one process that
receive the same poison message count it once and dead-letter it once (and on
NATS, several processes put it in ``dead.*`` once). A message with fields this
version does not know is *not* poison (a newer sender, a rolling upgrade): it
is delivered, and counted (``tidecast_bus_unknown_fields_total{kind}``).
``bus.consumer.consume`` dead-letters a message whose handler raises.

Every queue is bounded, with a policy by subject root: on the durable roots
(``DURABLE_ROOTS``) a full queue holds the publisher back (``publish`` waits
for room up to a deadline, then raises ``BusFull``); on the others (chat,
events) the oldest message is dropped. Both are counted
(``tidecast_bus_full_total{subject}``, ``tidecast_bus_dropped_total{subject,
reason}``). Metric labels name the subject's root (its first token). (On
NATS the durable subjects are a JetStream stream: the server stores them and
holds a slow reader back with flow control; its core subscriptions drop the
oldest, and what the client library drops as a slow consumer is counted too.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tidecast.messages import Message

DEAD_ROOT = "dead"
DURABLE_ROOTS = ("job", "segment", "broadcast", DEAD_ROOT)  # stored; backpressure when full


def subject_root(subject: str) -> str:
    """The first token of a subject (``segment.main`` -> ``segment``): metric labels."""
    return subject.split(".", 1)[0]


def is_durable(subject: str) -> bool:
    return subject_root(subject) in DURABLE_ROOTS


def dead_subject(subject: str) -> str:
    """Where a message on ``subject`` goes when no consumer can take it."""
    return subject if subject.startswith(f"{DEAD_ROOT}.") else f"{DEAD_ROOT}.{subject}"


class BusFull(RuntimeError):
    """A bounded queue of the bus stayed full past its deadline: the publish is refused."""


class BusNotReady(RuntimeError):
    """Subscriptions did not become active on the bus within ``ready``'s deadline."""


@dataclass(slots=True)
class Delivery:
    """One message handed to one consumer; settle it once: ``ack`` when done, ``nak``
    to get it again later, ``term`` to drop it for good."""

    subject: str
    message: Message
    attempt: int
    _ack: Callable[[], Awaitable[None]]
    _nak: Callable[[float], Awaitable[None]]
    _progress: Callable[[], Awaitable[None]] | None = None
    _term: Callable[[], Awaitable[None]] | None = None
    data: bytes = b""  # the bytes as they were on the bus
    settled: bool = field(default=False)

    async def ack(self) -> None:
        if not self.settled:
            self.settled = True
            await self._ack()

    async def nak(self, delay: float = 0.0) -> None:
        if not self.settled:
            self.settled = True
            await self._nak(delay)

    async def term(self) -> None:
        """Never deliver this message again (to anyone)."""
        if not self.settled:
            self.settled = True
            await (self._term or self._ack)()

    async def in_progress(self) -> None:
        """Still working on it: a durable bus restarts its redelivery clock."""
        if self._progress is not None and not self.settled:
            await self._progress()


class Subscription(Protocol):
    def __aiter__(self) -> AsyncIterator[Delivery]: ...

    async def next(self, timeout: float | None = None) -> Delivery | None:
        """The next message (a group member pulls exactly one); None after ``timeout``
        seconds without one, or once the subscription is closed."""
        ...

    def pending(self) -> int:
        """Messages waiting for this subscription's consumer (for a group: in the queue
        its members pull from, where the bus keeps one)."""
        ...

    async def aclose(self) -> None: ...


class Bus(Protocol):
    async def publish(self, subject: str, message: Message) -> None:
        """Hand ``message`` to every subscription of ``subject``. On a durable subject it
        returns once the message is stored (or queued for every subscriber), which can
        wait for room; ``BusFull`` when there is still none at the bus's deadline."""
        ...

    async def publish_raw(self, subject: str, data: bytes) -> None:
        """Publish bytes as they are (dead letters; tests of what consumers do with
        bytes that are not a message)."""
        ...

    def subscribe(self, pattern: str, group: str | None = None) -> Subscription:
        """Subscribe to a subject pattern (``*`` one token, ``>`` the rest).

        Subscribers sharing a ``group`` split the messages between them (work
        queue); each group and each ungrouped subscriber gets every message.
        """
        ...

    async def ready(self, timeout: float = 30.0) -> None:
        """Wait until every subscription made so far receives messages; ``BusNotReady``
        if some still do not after ``timeout`` seconds."""
        ...

    async def replay(self, patterns: Sequence[str], since: float) -> list[Message]:
        """Every stored message on any of ``patterns`` published at or after ``since``
        (epoch seconds), in publish order, up to now. Only durable subjects are kept;
        stored bytes that are not a message are skipped (and counted)."""
        ...

    async def aclose(self) -> None: ...
