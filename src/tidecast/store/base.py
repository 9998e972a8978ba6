"""The Store interface every stage codes against, conditional writes, and key validation.

``Store`` is what every stage needs: whole objects, written atomically.
``VersionedStore`` adds conditional writes (compare-and-swap on an opaque
version), which ``store/fenced.py`` builds fencing on: ``get_versioned``
returns an object with its version, and ``put_if`` writes only while the
stored object still has the version the caller read (or, with ``None``,
only while the key does not exist). Both stores (local, S3) implement it.
"""

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


class VersionedStore(Store, Protocol):
    """A store with conditional writes.

    A version is an opaque string that changes when a key is written (local: inode,
    modification time and size, new on every write; S3: the ETag, the MD5 of the
    bytes, so writing the very same bytes again keeps it, which is harmless for a
    compare-and-swap). Compare versions only for equality, only of the same key.
    """

    async def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object under ``key`` and its version; raises ObjectNotFound."""
        ...

    async def put_if(self, key: str, data: bytes, version: str | None) -> str | None:
        """Write ``data`` only if the stored object still has ``version`` (``None``: only
        if ``key`` does not exist), atomically; return the new version, or ``None`` when
        the precondition failed (someone else wrote, created or deleted the key).

        After an error (a cut connection) the write may or may not have happened; a retry
        of a write that did land then fails its precondition. Callers that retry (see
        ``FencedWriter``) re-read and decide again rather than trust a ``None`` blindly.
        """
        ...
