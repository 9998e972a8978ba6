"""consume(): the one consumer loop every stage runs on a bus subscription.

The subscription already keeps bytes that are not a message away (see
``bus.base``). ``consume`` keeps the loop alive past a handler that fails: for
each delivery it awaits ``handler(delivery)``; when the handler raises, the
failure is logged with its traceback, the message is copied to
``dead.<subject>`` as a ``DeadLetter`` (reason: the exception; consumer:
``name``), counted (``tidecast_bus_dead_letters_total{subject,consumer}``)
and terminated, and the loop goes on with the next delivery. A handler that
returns without settling its delivery has it acknowledged. Cancellation ends
the loop (the delivery in hand is given back with ``nak`` so another member
can take it now); so does the subscription closing.

Usage::

    async def on_segment(d: Delivery) -> None:
        ...  # ack/nak/term it, or just return (acked)

    sup.spawn("packager-consume", lambda: consume(sub, on_segment, bus=bus, name="packager"))

``read_dead_letters`` lists what is in ``dead.*`` (for tests and operators).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from tidecast.bus.base import DEAD_ROOT, Bus, Delivery, Subscription, dead_subject, subject_root
from tidecast.bus.intake import dead_letter
from tidecast.messages import DeadLetter, encode
from tidecast.metrics import REGISTRY

log = logging.getLogger("tidecast.bus.consumer")

Handler = Callable[[Delivery], Awaitable[None]]

DEAD_LETTERS = REGISTRY.counter(
    "tidecast_bus_dead_letters_total",
    "Bus messages whose handler raised: dead-lettered and terminated.", ("subject", "consumer"),
)  # fmt: skip
SETTLE_TIMEOUT = 5.0  # seconds a settle (ack, nak, term) may take before the loop moves on


async def consume(sub: Subscription, handler: Handler, *, bus: Bus, name: str) -> None:
    """Run ``handler`` on every delivery of ``sub`` until it closes; never dies of a
    failing handler. ``name`` (one per stage, e.g. "packager") labels metrics, logs
    and dead letters."""
    while (d := await sub.next()) is not None:
        try:
            await handler(d)
        except asyncio.CancelledError:
            if not d.settled:
                await _settle(d.nak(), name, d, "give back")
            raise
        except Exception as exc:
            log.exception("%s: handling %s (attempt %d) failed; dead-lettering it",
                          name, d.subject, d.attempt)  # fmt: skip
            await dead_letter_delivery(bus, d, f"{type(exc).__name__}: {exc}", name)
            continue
        if not d.settled:
            await _settle(d.ack(), name, d, "ack")


async def dead_letter_delivery(bus: Bus, d: Delivery, reason: str, consumer: str) -> None:
    """Copy ``d`` to ``dead.<subject>``, count it and terminate it (never redelivered).
    Failures to publish or to terminate are logged; this never raises (but cancels)."""
    DEAD_LETTERS.inc(subject=subject_root(d.subject), consumer=consumer)
    if subject_root(d.subject) != DEAD_ROOT:  # a dead letter's own handler failed: no loop
        body = encode(dead_letter(d.subject, d.data or encode(d.message), reason, consumer))
        try:
            await bus.publish_raw(dead_subject(d.subject), body)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: could not publish the dead letter of %s", consumer, d.subject)
    await _settle(d.term(), consumer, d, "terminate")


async def _settle(op: Awaitable[None], name: str, d: Delivery, what: str) -> None:
    try:
        async with asyncio.timeout(SETTLE_TIMEOUT):
            await op
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the bus is away: a durable bus redelivers after its ack wait
        log.warning("%s: could not %s %s: %r", name, what, d.subject, exc, exc_info=True)


async def read_dead_letters(bus: Bus, since: float = 0.0, patterns: Sequence[str] = ("dead.>",)
                            ) -> list[DeadLetter]:  # fmt: skip
    """The dead letters stored since ``since`` (epoch seconds), oldest first."""
    return [m for m in await bus.replay(patterns, since) if isinstance(m, DeadLetter)]
