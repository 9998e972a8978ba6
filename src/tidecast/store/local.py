"""LocalStore: objects as files under one root directory, written atomically.

A write goes to a temporary file in the same directory, is fsync'ed only when
asked (media is reproducible; manifests are rewritten every segment), then
renamed over the final name, so a concurrent reader (the origin) never sees a
partial object.

Conditional writes (``put_if``) take an exclusive ``flock`` on a per-key lock
file under ``<root>/.locks/`` (no key can name it: key parts never start with a
dot, and ``list`` never shows it), compare the stored version, write-and-rename,
and unlock, so two processes on one host (or on NFS with locking) cannot both
win. A plain ``put`` or ``delete`` of a key that has a lock file takes it too.
A version is ``<inode>-<mtime ns>-<size>``; every write sets the new file's
modification time itself (the current time in ns, and, under the lock, past
the previous version's) so it changes on every write even on a coarse clock.

What is transient (``is_transient``): an OSError other than not-found,
is-a-directory, not-a-directory, permission or bad-name errors, e.g. EIO,
ENOSPC, a lock not obtained in time.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path

from tidecast.store.base import InvalidKey, ObjectNotFound, check_key

LOCK_DIR = ".locks"
PERMANENT_ERRNOS = frozenset({
    errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG,
    errno.EINVAL, errno.EEXIST, errno.EROFS, errno.ELOOP,
})  # fmt: skip
_LOCK_TRIES = 100  # re-opens when the lock file was replaced under us (delete_prefix)


class LockTimeout(TimeoutError):
    """A key's lock was not obtained within the store's lock timeout (transient)."""


def is_transient(exc: BaseException) -> bool:
    """A local-store error worth retrying (see the module docstring)."""
    if isinstance(exc, ObjectNotFound | InvalidKey):
        return False
    return isinstance(exc, OSError) and exc.errno not in PERMANENT_ERRNOS


def _version(st: os.stat_result) -> str:
    return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"


class LocalStore:
    def __init__(self, root: Path, *, lock_timeout: float = 10.0) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock_timeout = lock_timeout

    def path_for(self, key: str) -> Path:
        return self.root / check_key(key)

    # -- locking ---------------------------------------------------------------------
    def _lock(self, key: str, *, create: bool) -> int | None:
        """An fd holding the exclusive lock of ``key``; None if ``create`` is false and the
        key has no lock file. Raises LockTimeout after ``lock_timeout`` seconds."""
        path = self.root / LOCK_DIR / check_key(key)
        deadline = time.monotonic() + self.lock_timeout
        for _ in range(_LOCK_TRIES):
            try:
                fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
            except FileNotFoundError:
                if not create:
                    return None
                path.parent.mkdir(parents=True, exist_ok=True)
                continue
            try:
                pause = 0.001
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() + pause > deadline:
                            raise LockTimeout(f"lock of {key!r} not obtained in {self.lock_timeout:g} s") from None
                        time.sleep(pause)
                        pause = min(pause * 2, 0.05)
                try:
                    same = os.stat(path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                return fd
            os.close(fd)  # the lock file was removed while we waited: lock the new one
        raise LockTimeout(f"lock file of {key!r} kept changing")

    # -- writes ------------------------------------------------------------------------
    def _write(self, path: Path, data: bytes, after_ns: int = 0) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix="~")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            ns = max(time.time_ns(), after_ns + 1)
            os.utime(tmp, ns=(ns, ns))
            os.chmod(tmp, 0o644)
            st = os.stat(tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return _version(st)

    def _put(self, key: str, data: bytes) -> None:
        path = self.path_for(key)
        lock = self._lock(key, create=False)
        try:
            self._write(path, data)
        finally:
            if lock is not None:
                os.close(lock)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, key, data)

    def _put_if(self, key: str, data: bytes, version: str | None) -> str | None:
        path = self.path_for(key)
        fd = self._lock(key, create=True)
        assert fd is not None
        try:
            try:
                st: os.stat_result | None = os.stat(path)
            except FileNotFoundError:
                st = None
            if st is not None and path.is_dir():
                raise IsADirectoryError(errno.EISDIR, "a key names a directory", str(path))
            if (None if st is None else _version(st)) != version:
                return None
            return self._write(path, data, 0 if st is None else st.st_mtime_ns)
        finally:
            os.close(fd)

    async def put_if(self, key: str, data: bytes, version: str | None) -> str | None:
        return await asyncio.to_thread(self._put_if, key, data, version)

    # -- reads -------------------------------------------------------------------------
    async def get(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self.path_for(key).read_bytes)
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def _get_versioned(self, key: str) -> tuple[bytes, str]:
        try:
            with self.path_for(key).open("rb") as f:
                st = os.fstat(f.fileno())  # the file we read, even if replaced meanwhile
                return f.read(), _version(st)
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    async def get_versioned(self, key: str) -> tuple[bytes, str]:
        return await asyncio.to_thread(self._get_versioned, key)

    async def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    # -- deletes -----------------------------------------------------------------------
    def _delete(self, key: str) -> None:
        path = self.path_for(key)
        lock = self._lock(key, create=False)
        try:
            path.unlink(missing_ok=True)
        finally:
            if lock is not None:
                os.close(lock)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, key)

    def _drop_locks(self, prefix: str) -> None:
        """Remove the lock files under ``prefix``, each while holding it, then the empty
        directories (a lock file created meanwhile keeps its directory)."""
        base = self.root / LOCK_DIR / prefix
        if not base.is_dir():
            return
        for p in sorted(base.rglob("*"), reverse=True):
            if p.is_dir():
                try:
                    p.rmdir()
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                        raise
                continue
            fd = self._lock(p.relative_to(self.root / LOCK_DIR).as_posix(), create=False)
            if fd is not None:
                try:
                    p.unlink(missing_ok=True)
                finally:
                    os.close(fd)
        try:
            base.rmdir()
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                raise

    async def delete_prefix(self, prefix: str) -> int:
        base = self.path_for(prefix)

        def remove() -> int:
            self._drop_locks(check_key(prefix))
            if not base.is_dir():
                return 0
            count = sum(1 for p in base.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))
            shutil.rmtree(base)
            return count

        return await asyncio.to_thread(remove)

    async def list(self, prefix: str) -> list[str]:
        prefix = prefix.rstrip("/")
        base = self.root / check_key(prefix) if prefix else self.root
        if not base.exists():
            return []

        def walk() -> list[str]:
            out = []
            for p in base.rglob("*"):
                rel = p.relative_to(self.root)
                if p.is_file() and not any(part.startswith(".") for part in rel.parts):
                    out.append(rel.as_posix())
            return sorted(out)

        return await asyncio.to_thread(walk)
