"""The Store interface every stage codes against, and key validation."""

from __future__ import annotations

import re
from typing import Protocol

_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class InvalidKey(ValueError):
    """A key that could name something outside the store (``..``, absolute, odd bytes)."""


class ObjectNotFound(KeyError):
    """No object under that key."""


def check_key(key: str) -> str:
    """Return ``key`` if every ``/``-separated part is a plain name, else raise InvalidKey."""
    parts = key.split("/")
    if not key or any(not _KEY_PART.match(p) for p in parts):
        raise InvalidKey(f"invalid object key {key!r}")
    return key


class Store(Protocol):
    """Objects are written whole and atomically: a reader sees all of one or nothing."""

    async def put(self, key: str, data: bytes) -> None: ...

    async def get(self, key: str) -> bytes: ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None: ...

    async def list(self, prefix: str) -> list[str]: ...

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix/``; returns how many."""
        ...
