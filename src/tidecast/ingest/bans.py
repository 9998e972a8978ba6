"""Brute-force protection for ingest: failed publish attempts per address, then a ban.

Sans-I/O: every call takes the time (``now``, seconds) and answers at once.

    bans = MemoryBans(BanPolicy(max_failures=10, window=60, ban_seconds=600))
    bans.failed("203.0.113.9", now)      # -> the ban's end once the 10th failure in 60 s lands
    bans.banned_until("203.0.113.9", now)  # -> that end (None when not banned)

What counts as a failure is the caller's choice (``ingest/auth.py``: an unknown
stream key, a token that does not verify, a webhook that refuses); attempts
while banned do not extend the ban. IPv6 addresses are counted per /64, the
block one subscriber gets, so rotating through it does not escape the limit.

State is per node and bounded (``max_tracked`` addresses, least recently seen
dropped first). ``BanStore`` is the interface the ingest needs, so a store
shared by every ingest node (a database table keyed by address, with the
ban's end as a column compared with the database's clock) can replace
``MemoryBans`` without touching the callers.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Protocol

from tidecast.ingest.access import parse_address


@dataclass(frozen=True, slots=True)
class BanPolicy:
    max_failures: int = 10  # failures within ``window`` that ban the address
    window: float = 60.0  # seconds
    ban_seconds: float = 600.0  # 0 = never ban
    max_tracked: int = 100_000  # addresses remembered at once


class BanStore(Protocol):
    def banned_until(self, ip: str, now: float) -> float | None:
        """When the ban on ``ip`` ends, or None when it is not banned."""
        ...

    def failed(self, ip: str, now: float) -> float | None:
        """Count a failed attempt; returns the ban's end when this failure bans ``ip``."""
        ...


def ban_key(ip: str) -> str:
    """The unit a ban applies to: the address (IPv4), its /64 (IPv6)."""
    addr = parse_address(ip)
    if addr is None:
        return ip
    if addr.version == 6:
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


@dataclass(slots=True)
class _Entry:
    failures: deque[float]
    banned_until: float = 0.0


class MemoryBans:
    """This node's failed attempts and bans (see the module docstring)."""

    def __init__(self, policy: BanPolicy | None = None) -> None:
        self.policy = policy or BanPolicy()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.bans = 0  # bans imposed so far

    def __len__(self) -> int:
        return len(self._entries)

    def banned_until(self, ip: str, now: float) -> float | None:
        entry = self._entries.get(ban_key(ip))
        if entry is None or entry.banned_until <= now:
            return None
        return entry.banned_until

    def failed(self, ip: str, now: float) -> float | None:
        p = self.policy
        key = ban_key(ip)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(deque(maxlen=p.max_failures))
            while len(self._entries) > p.max_tracked:
                self._entries.popitem(last=False)  # the least recently seen goes
        else:
            self._entries.move_to_end(key)
        if entry.banned_until > now:
            return None  # already banned: the ban is not extended
        entry.failures.append(now)
        while entry.failures and entry.failures[0] <= now - p.window:
            entry.failures.popleft()
        if p.ban_seconds > 0 and len(entry.failures) >= p.max_failures:
            entry.failures.clear()
            entry.banned_until = now + p.ban_seconds
            self.bans += 1
            return entry.banned_until
        return None
