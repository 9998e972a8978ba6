"""Retries with exponential backoff and jitter, bounded by attempts and a deadline.

Every stage that talks to a store, a database or a broker retries transient
errors the same way: the delay doubles from ``initial`` up to ``maximum``, each
delay drawn from ``[delay * (1 - jitter), delay]`` so that many clients that
failed together do not retry together. A retry loop always ends: after
``attempts`` tries or once ``deadline`` seconds have passed, the last error is
raised. What counts as transient is the caller's decision (a predicate).

Usage::

    data = await retry(lambda: store.get(key), transient=is_transient,
                       what=f"GET {key}", deadline=30.0)
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger("tidecast.retry")


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0
    jitter: float = 0.5  # fraction of each delay that is random

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum and self.factor >= 1 and 0 <= self.jitter <= 1):
            raise ValueError(f"bad backoff {self}")

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """An endless series of delays: initial, initial*factor, ... capped at maximum."""
        r = rng or random
        delay = self.initial
        while True:
            yield delay * (1 - self.jitter * r.random())
            delay = min(delay * self.factor, self.maximum)


class RetryGaveUp(Exception):
    """Raised by ``retry`` only when ``attempts`` is 0 (nothing was tried)."""


async def retry(
    op: Callable[[], Awaitable[T]], *, transient: Callable[[BaseException], bool], what: str,
    attempts: int | None = None, deadline: float | None = None, backoff: Backoff | None = None,
    logger: logging.Logger | None = None, on_retry: Callable[[BaseException], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T:  # fmt: skip
    """Run ``op`` until it succeeds, a non-transient error, ``attempts`` or ``deadline``.

    ``deadline`` is in seconds from now; a delay that would end past it is not
    slept: the last error is raised instead. With neither bound the loop runs
    until the error is not transient (use that only where waiting forever is right).
    """
    if attempts is not None and attempts < 1:
        raise RetryGaveUp(f"{what}: no attempt allowed")
    lg = logger or log
    end = None if deadline is None else clock() + deadline
    delays = (backoff or Backoff()).delays()
    tried = 0
    while True:
        tried += 1
        try:
            return await op()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not transient(exc):
                raise
            delay = next(delays)
            if (attempts is not None and tried >= attempts) or (end is not None and clock() + delay > end):
                lg.warning("%s failed %d time(s); giving up: %r", what, tried, exc)
                raise
            if on_retry is not None:
                on_retry(exc)
            lg.warning("%s failed (%r); retry %d in %.2f s", what, exc, tried, delay)
            await asyncio.sleep(delay)
