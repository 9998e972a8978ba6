"""RetryingStore: any store, with transient errors retried under a per-operation deadline.

Each operation is retried with exponential backoff and jitter (``tidecast.retry``)
while its error is transient, until ``StoreRetry.deadline`` seconds have passed
since it began; an attempt still running at the deadline is abandoned
(``TimeoutError``). What is transient depends on the store: for S3 a
connection error, a timeout, HTTP 5xx, SlowDown / RequestTimeout /
InternalError; for the local store an OSError other than not-found,
is-a-directory or a bad name (EIO, ENOSPC, a busy lock). Never retried:
ObjectNotFound, InvalidKey, and a failed ``put_if`` precondition (that is an
answer, ``None``, not an error).

Counted: ``tidecast_store_retries_total{op}`` (each retry) and
``tidecast_store_failures_total{op}`` (operations that failed for good: the
deadline passed on a transient error, or the store raised a permanent error
other than ObjectNotFound / InvalidKey).

Any other attribute (``ensure_bucket``, ``root``, ``bucket``) is the wrapped
store's; ``unwrap(store)`` gives the wrapped store itself (for ``isinstance``).

Usage::

    store = RetryingStore(S3Store("media", endpoint_url=...), StoreRetry(deadline=20.0))
    await store.put(key, data)  # retried through a short outage, then raises
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tidecast.metrics import REGISTRY, Registry
from tidecast.retry import Backoff, retry
from tidecast.store import local, s3
from tidecast.store.base import InvalidKey, ObjectNotFound, VersionedStore

T = TypeVar("T")

log = logging.getLogger("tidecast.store")


def is_transient(exc: BaseException) -> bool:
    """Transient for any store tidecast has (local or S3)."""
    if isinstance(exc, ObjectNotFound | InvalidKey):
        return False
    return local.is_transient(exc) or s3.is_transient(exc)


@dataclass(frozen=True, slots=True)
class StoreRetry:
    """How a RetryingStore retries: each operation gives up ``deadline`` s after it began."""

    deadline: float = 30.0
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.05, maximum=2.0))
    transient: Callable[[BaseException], bool] = is_transient

    def __post_init__(self) -> None:
        if not self.deadline > 0:
            raise ValueError(f"a store retry deadline must be positive, got {self.deadline!r}")


class RetryingStore:
    """Implements ``VersionedStore`` by delegating to ``inner`` (see the module docstring)."""

    def __init__(
        self, inner: VersionedStore, policy: StoreRetry | None = None, *, registry: Registry = REGISTRY
    ) -> None:
        self.inner = inner
        self.policy = policy or StoreRetry()
        self.retries = registry.counter(
            "tidecast_store_retries_total", "Store operations retried after a transient error.", ("op",)
        )
        self.failures = registry.counter(
            "tidecast_store_failures_total",
            "Store operations that failed for good (retry deadline passed, or a permanent error).",
            ("op",),
        )  # fmt: skip

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def _call(self, op: str, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        end = loop.time() + self.policy.deadline

        async def attempt() -> T:
            left = end - loop.time()
            if left <= 0:
                raise TimeoutError(f"store {what}: deadline of {self.policy.deadline:g} s passed")
            async with asyncio.timeout(left):
                return await fn()

        try:
            return await retry(
                attempt, transient=self.policy.transient, what=f"store {what}",
                deadline=self.policy.deadline, backoff=self.policy.backoff, logger=log,
                on_retry=lambda _exc: self.retries.inc(op=op), clock=loop.time,
            )  # fmt: skip
        except (ObjectNotFound, InvalidKey):
            raise
        except Exception:
            self.failures.inc(op=op)
            raise

    async def put(self, key: str, data: bytes) -> None:
        await self._call("put", f"PUT {key}", lambda: self.inner.put(key, data))

    async def get(self, key: str) -> bytes:
        return await self._call("get", f"GET {key}", lambda: self.inner.get(key))

    async def exists(self, key: str) -> bool:
        return await self._call("exists", f"HEAD {key}", lambda: self.inner.exists(key))

    async def delete(self, key: str) -> None:
        await self._call("delete", f"DELETE {key}", lambda: self.inner.delete(key))

    async def list(self, prefix: str) -> list[str]:
        return await self._call("list", f"LIST {prefix}", lambda: self.inner.list(prefix))

    async def delete_prefix(self, prefix: str) -> int:
        return await self._call("delete_prefix", f"DELETE {prefix}/*",
                                lambda: self.inner.delete_prefix(prefix))  # fmt: skip

    async def get_versioned(self, key: str) -> tuple[bytes, str]:
        return await self._call("get_versioned", f"GET {key}", lambda: self.inner.get_versioned(key))

    async def put_if(self, key: str, data: bytes, version: str | None) -> str | None:
        return await self._call("put_if", f"conditional PUT {key}",
                                lambda: self.inner.put_if(key, data, version))  # fmt: skip


def unwrap(store: Any) -> Any:
    """The store under any RetryingStore wrappers (for ``isinstance`` checks)."""
    while isinstance(store, RetryingStore):
        store = store.inner
    return store
