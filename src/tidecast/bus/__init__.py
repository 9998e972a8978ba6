"""Message bus: how stages hand each other typed messages.

Embedded default: in-process queues (``MemoryBus``). Scale-out: NATS JetStream.
Subjects used: ``broadcast.<stream>`` (started/ended) and ``segment.<stream>``.
"""

from tidecast.bus.base import Bus, Delivery, Subscription
from tidecast.bus.memory import MemoryBus

__all__ = ["Bus", "Delivery", "MemoryBus", "Subscription"]
