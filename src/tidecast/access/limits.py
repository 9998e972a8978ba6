"""Password guessing limits: failed attempts per address (and per stream), in a window.

Sans-I/O: the time is an argument. ``allowed`` says whether an address may try
now (and, if not, for how long it must wait); ``failed`` counts a wrong password.
A success does not reset the count: a guesser that also knows one password
gains nothing. Memory is bounded (the oldest addresses are forgotten first).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

WINDOW = 60.0  # seconds


@dataclass
class AttemptLimiter:
    per_address: int = 5  # failed attempts per address per window
    per_stream: int = 50  # failed attempts per stream per window, from everywhere
    window: float = WINDOW
    max_tracked: int = 10_000
    _by_address: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)
    _by_stream: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, q: deque[float], now: float) -> deque[float]:
        while q and q[0] <= now - self.window:
            q.popleft()
        return q

    def allowed(self, address: str, stream: str, now: float) -> float:
        """0 when ``address`` may try a password for ``stream`` now, else seconds to wait."""
        waits = []
        q = self._by_address.get(address)
        if q is not None and len(self._recent(q, now)) >= self.per_address:
            waits.append(q[0] + self.window - now)
        s = self._by_stream.get(stream)
        if s is not None and len(self._recent(s, now)) >= self.per_stream:
            waits.append(s[0] + self.window - now)
        return max(waits, default=0.0)

    def failed(self, address: str, stream: str, now: float) -> None:
        q = self._by_address.pop(address, None) or deque()
        q.append(now)
        self._by_address[address] = q  # most recent last
        while len(self._by_address) > self.max_tracked:
            self._by_address.popitem(last=False)
        s = self._by_stream.setdefault(stream, deque())
        s.append(now)
        while len(s) > self.per_stream:
            s.popleft()
        while len(q) > self.per_address:
            q.popleft()
