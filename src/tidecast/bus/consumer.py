"""The one consumer loop every stage uses: a handler that raises never kills it.

``consume(sub, handler, bus=bus, name="packager")`` calls ``handler(delivery)``
for each message; a handler that raises gets its message dead-lettered
(``dead.<subject>``, a ``DeadLetter`` carrying the bytes and the error),
terminated and counted, and the loop goes on. A delivery the handler did not
settle is acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from tidecast.bus.base import Bus, Delivery, Subscription, dead_subject
from tidecast.messages import DeadLetter, encode
from tidecast.metrics import REGISTRY

log = logging.getLogger("tidecast.bus.consumer")

DEAD_LETTERS = REGISTRY.counter(
    "tidecast_bus_dead_letters_total",
    "Bus messages whose handler raised: dead-lettered and terminated.",
    ("subject", "consumer"),
)

Handler = Callable[[Delivery], Awaitable[None]]


async def dead_letter(bus: Bus, delivery: Delivery, reason: str, consumer: str) -> None:
    """Copy ``delivery`` to ``dead.<subject>`` and terminate it."""
    data = delivery.data or encode(delivery.message)
    DEAD_LETTERS.inc(subject=delivery.subject.split(".", 1)[0], consumer=consumer)
    try:
        await bus.publish(
            dead_subject(delivery.subject), DeadLetter.of(delivery.subject, data, reason, consumer, time.time())
        )
    except Exception as exc:  # noqa: BLE001 - the message is logged; losing its copy must not stop us
        log.warning("%s: could not dead-letter a message on %s: %r", consumer, delivery.subject, exc)
    await delivery.term()


async def consume(sub: Subscription, handler: Handler, *, bus: Bus, name: str) -> None:
    async for delivery in sub:
        try:
            await handler(delivery)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("%s: handling a message on %s failed; dead-lettered", name, delivery.subject)
            await dead_letter(bus, delivery, repr(exc), name)
            continue
        if not delivery.settled:
            await delivery.ack()
