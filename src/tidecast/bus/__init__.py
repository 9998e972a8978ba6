"""Message bus: how stages hand each other typed messages.

Embedded default: in-process queues (``MemoryBus``). Scale-out: NATS JetStream.
Subjects used: ``broadcast.<stream>`` (started/ended), ``segment.<stream>``,
``job.transcode.<stream>``, ``chat.<stream>``, ``playlist.<stream>`` (a playlist
was written), ``event.*`` and ``dead.<subject>`` (what no consumer could take).
``base`` is the contract, ``intake`` screens what subscriptions receive,
``consumer.consume`` is the loop every stage runs.
"""

from tidecast.bus.base import Bus, BusFull, BusNotReady, Delivery, Subscription, dead_subject
from tidecast.bus.consumer import consume, read_dead_letters
from tidecast.bus.memory import MemoryBus

__all__ = ["Bus", "BusFull", "BusNotReady", "Delivery", "MemoryBus", "Subscription", "consume",
           "dead_subject", "read_dead_letters"]  # fmt: skip
