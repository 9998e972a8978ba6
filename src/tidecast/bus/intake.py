"""Intake: what a subscription does with the bytes it receives, on every bus.

``Intake.screen(subject, data, key)`` decodes the bytes (``decode_with_extras``)
and returns the message, or a ``Poison`` for bytes that are not one. A poison
message is logged (subject and an excerpt) and counted
(``tidecast_bus_poison_messages_total{subject}``) the first time this bus sees
it; ``key`` names the message on the bus (a stream sequence, a publish
sequence, or a hash of subject and bytes), so that several subscriptions of one
process receiving the same message count it once and dead-letter it once
(``Poison.first``). A message with fields this version does not know is
delivered; it is counted once (``tidecast_bus_unknown_fields_total{kind}``) and
each (kind, field) is logged once.

The memory of what was seen is bounded (an LRU of ``remember`` keys, each
optionally forgotten after a window). The metric families the buses share
live here too: overflow drops, refused publishes.

Usage (in a subscription)::

    got = bus.intake.screen(subject, data, key=lambda: f"{stream}:{seq}")
    if isinstance(got, Poison):
        if got.first:
            await bus.dead_letter(subject, data, got.reason, consumer, got.key)
        await term()
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from tidecast.bus.base import subject_root
from tidecast.messages import DeadLetter, Message, MessageError, decode_with_extras, excerpt
from tidecast.metrics import REGISTRY, Registry

log = logging.getLogger("tidecast.bus")

DEAD_PAYLOAD_LIMIT = 256 * 1024  # bytes of a dead message kept in its DeadLetter
LOGGED_FIELDS_LIMIT = 1000  # distinct (kind, field) pairs logged; later ones are only counted


@dataclass(frozen=True, slots=True)
class Poison:
    """Bytes on the bus that are not a message."""

    reason: str
    key: str
    first: bool  # the first sighting on this bus: dead-letter it (later ones are only dropped)


class Seen:
    """A bounded memory of message keys (least recently seen forgotten first)."""

    def __init__(self, limit: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self._keys: OrderedDict[str, float] = OrderedDict()

    def add(self, key: str, window: float | None = None) -> bool:
        """Remember ``key``; True if it is new (or was last seen more than ``window`` s ago)."""
        now = self.clock()
        last = self._keys.pop(key, None)
        self._keys[key] = now
        while len(self._keys) > self.limit:
            self._keys.popitem(last=False)
        return last is None or (window is not None and now - last > window)

    def __len__(self) -> int:
        return len(self._keys)


class Intake:
    """Decoding and poison screening for one bus (one per process in a deployment)."""

    def __init__(self, *, remember: int = 10_000, registry: Registry = REGISTRY) -> None:
        self.poison = registry.counter(
            "tidecast_bus_poison_messages_total",
            "Bus messages that could not be decoded (dead-lettered, never delivered), "
            "counted once per process.", ("subject",))  # fmt: skip
        self.unknown_fields = registry.counter(
            "tidecast_bus_unknown_fields_total",
            "Bus messages delivered with fields this version does not know (newer sender).",
            ("kind",))  # fmt: skip
        self.dropped = registry.counter(
            "tidecast_bus_dropped_total",
            "Bus messages dropped: a full queue on a non-durable subject (oldest dropped), "
            "a slow consumer, or a redelivery with no consumer left.", ("subject", "reason"))  # fmt: skip
        self.full = registry.counter(
            "tidecast_bus_full_total",
            "Publishes refused because a bounded bus queue stayed full past the deadline.",
            ("subject",))  # fmt: skip
        self.dead_failures = registry.counter(
            "tidecast_bus_dead_letter_failures_total",
            "Dead letters that could not be published.", ("subject",))  # fmt: skip
        self._poison_seen = Seen(remember)
        self._extras_seen = Seen(remember)
        self._fields_logged: set[tuple[str, str]] = set()

    def screen(
        self, subject: str, data: bytes, key: Callable[[], str], window: float | None = None
    ) -> Message | Poison:
        """The message in ``data`` (received on ``subject``, without any deployment
        prefix), or a Poison. ``key()`` is called only for poison and for messages with
        unknown fields; ``window``: forget a key after that many seconds (for keys that
        are a hash of the bytes rather than a position on the bus)."""
        try:
            msg, extras = decode_with_extras(data)
        except MessageError as exc:
            k = key()
            first = self._poison_seen.add(k, window)
            if first:
                self.poison.inc(subject=subject_root(subject))
                log.warning("poison message on %s (%s), dead-lettered: %s", subject, exc, excerpt(data))
            return Poison(str(exc), k, first)
        if extras and self._extras_seen.add(key(), window):
            self.unknown_fields.inc(kind=msg.kind)
            for name in extras:
                pair = (msg.kind, name)
                if pair not in self._fields_logged and len(self._fields_logged) < LOGGED_FIELDS_LIMIT:
                    self._fields_logged.add(pair)
                    log.warning("%s on %s carries field %r this version does not know; ignoring it",
                                msg.kind, subject, name)  # fmt: skip
        return msg

    def drop(self, subject: str, reason: str, amount: int = 1) -> None:
        self.dropped.inc(amount, subject=subject_root(subject), reason=reason)


def dead_letter(subject: str, data: bytes, reason: str, consumer: str) -> DeadLetter:
    """The DeadLetter of ``data`` (at most ``DEAD_PAYLOAD_LIMIT`` bytes of it kept; ``size``
    is always the full size)."""
    dl = DeadLetter.of(subject, data[:DEAD_PAYLOAD_LIMIT], reason, consumer, time.time())
    return dl if len(data) <= DEAD_PAYLOAD_LIMIT else replace(dl, size=len(data))
