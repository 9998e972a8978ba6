"""The Bus interface: publish typed messages to subjects, consume with ack/nak/term.

Two ways to consume:

- **Fan-out** (``subscribe(pattern)``, no group): every subscriber gets every
  message; iterate with ``async for``.
- **Work queue** (``subscribe(pattern, group=...)``): the members of a group
  share the messages, each to one member. Members *pull*: ``await sub.next()``
  takes one message when the member has room for it, so a member never holds
  more unacknowledged messages than it has asked for (no prefetch). ``async
  for`` on a group subscription pulls one message per iteration.

A message that cannot be decoded never reaches a consumer: the subscription
logs it (subject and a short excerpt), counts it, copies it to
``dead.<subject>`` as a ``DeadLetter`` and terminates it (never redelivered).
``bus.consumer.consume`` does the same for a message whose handler raises.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tidecast.messages import Message

DEAD_ROOT = "dead"


def dead_subject(subject: str) -> str:
    """Where a message on ``subject`` goes when no consumer can take it."""
    return subject if subject.startswith(f"{DEAD_ROOT}.") else f"{DEAD_ROOT}.{subject}"


class BusFull(RuntimeError):
    """A bounded queue of the bus stayed full past its deadline: the publish is refused."""


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
        """Messages delivered to this subscription and not yet taken by its consumer."""
        ...

    async def aclose(self) -> None: ...


class Bus(Protocol):
    async def publish(self, subject: str, message: Message) -> None: ...

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

    async def ready(self) -> None:
        """Wait until every subscription made so far receives messages."""
        ...

    async def replay(self, patterns: Sequence[str], since: float) -> list[Message]:
        """Every stored message on any of ``patterns`` published at or after ``since``
        (epoch seconds), in publish order, up to now. Only durable subjects are kept;
        stored bytes that are not a message are skipped (and counted)."""
        ...

    async def aclose(self) -> None: ...
