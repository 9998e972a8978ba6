"""The Bus interface: publish typed messages to subjects, consume with ack/nak."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tidecast.messages import Message


@dataclass(slots=True)
class Delivery:
    """One message handed to one consumer; ``ack`` when done, ``nak`` to get it again later."""

    subject: str
    message: Message
    attempt: int
    _ack: Callable[[], Awaitable[None]]
    _nak: Callable[[float], Awaitable[None]]
    _progress: Callable[[], Awaitable[None]] | None = None

    async def ack(self) -> None:
        await self._ack()

    async def nak(self, delay: float = 0.0) -> None:
        await self._nak(delay)

    async def in_progress(self) -> None:
        """Still working on it: a durable bus restarts its redelivery clock."""
        if self._progress is not None:
            await self._progress()


class Subscription(Protocol):
    def __aiter__(self) -> AsyncIterator[Delivery]: ...

    def pending(self) -> int:
        """Messages delivered to this subscription and not yet taken by its consumer."""
        ...

    async def aclose(self) -> None: ...


class Bus(Protocol):
    async def publish(self, subject: str, message: Message) -> None: ...

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
        (epoch seconds), in publish order, up to now. Only durable subjects are kept."""
        ...

    async def aclose(self) -> None: ...
