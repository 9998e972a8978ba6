"""Concurrency caps by client address: at most N things per address, M in all.

``Slots`` is sans-I/O bookkeeping: ``take`` says yes (and counts it) or why
not, ``release`` gives the slot back. The MP4 downloads and the chat sockets
use it with the address from ``tidecast.netaddr``.
"""

from __future__ import annotations

import enum


class Refusal(enum.Enum):
    PER_IP = "per_ip"
    TOTAL = "total"


class Slots:
    def __init__(self, per_key: int, total: int | None = None) -> None:
        if per_key < 1 or (total is not None and total < per_key):
            raise ValueError("per_key must be >= 1 and total >= per_key")
        self.per_key = per_key
        self.total = total
        self.held: dict[str, int] = {}
        self.in_use = 0

    def take(self, key: str) -> Refusal | None:
        """Count one for ``key``; a ``Refusal`` (and nothing counted) when over a cap."""
        if self.total is not None and self.in_use >= self.total:
            return Refusal.TOTAL
        n = self.held.get(key, 0)
        if n >= self.per_key:
            return Refusal.PER_IP
        self.held[key] = n + 1
        self.in_use += 1
        return None

    def release(self, key: str) -> None:
        n = self.held.get(key, 0)
        if n <= 0:
            raise ValueError(f"release without take for {key!r}")
        if n == 1:
            del self.held[key]
        else:
            self.held[key] = n - 1
        self.in_use -= 1
