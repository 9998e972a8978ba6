"""Serving stored media objects over HTTP safely and cache-correctly.

- Only known media types are served, each with its Content-Type.
- Cache-Control: live playlists are short-lived, ended ones a little longer;
  segments and init segments never change (``immutable``).
- Strong ETags and Last-Modified; If-None-Match / If-Modified-Since give 304,
  If-Range is honoured.
- Single byte ranges (``a-b``, ``a-``, ``-n``) give 206; unsatisfiable 416;
  several ranges fall back to the whole object (allowed by RFC 9110).
- No way out of the media root: the decoded path must be plain names (no ``..``,
  no empty parts, no backslashes), encoded slashes are refused before decoding,
  and the final file must be a regular file, not a symlink, whose real path
  (as the kernel resolved it when opening) lies under the root.
- Hot files are served from memory (``HotFiles``), but every request still
  opens and fstat()s the file, so the checks above and freshness hold as for
  a cold read.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

MEDIA_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".m4a": "audio/mp4",
    ".ts": "video/mp2t",
    ".mpd": "application/dash+xml",
    ".vtt": "text/vtt; charset=utf-8",
    ".json": "application/json",
    ".jpg": "image/jpeg",
}
PLAYLIST_TYPES = {".m3u8", ".mpd"}
IMMUTABLE = "public, max-age=31536000, immutable"
LIVE_PLAYLIST = "public, max-age=1, stale-while-revalidate=1"
ENDED_PLAYLIST = "public, max-age=30"

_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class BadPath(ValueError):
    """The request path could name something outside the media root."""


@dataclass(frozen=True, slots=True)
class ServedObject:
    status: int
    headers: dict[str, str]
    body: bytes


def resolve(root: Path, raw_path: str, decoded: str) -> Path:
    """Map a request path below the root to a file path, or raise BadPath."""
    lowered = raw_path.lower()
    if "%2f" in lowered or "%5c" in lowered or "%00" in lowered or "\\" in decoded:
        raise BadPath("encoded separators are not allowed")
    parts = decoded.split("/")
    if not decoded or any(not _PART.match(p) for p in parts):
        raise BadPath(f"bad path {decoded!r}")
    return root.joinpath(*parts)


def _real_path(fd: int, path: Path) -> str:
    """Where the open file really is: the kernel's own answer on Linux (one
    readlink, and about the very file opened, so no check-then-open race), else
    os.path.realpath (an lstat per path component)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)


def _open_regular(root: Path, path: Path) -> tuple[int, os.stat_result]:
    """Open a regular, non-symlink file whose real path lies below root."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileNotFoundError(path)
        if not _real_path(fd, path).startswith(str(root) + os.sep):
            raise BadPath("outside the media root")  # a symlinked directory on the way
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def etag_for(st: os.stat_result) -> str:
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'


def _not_modified(headers: Mapping[str, str], etag: str, mtime: float) -> bool:
    inm = headers.get("if-none-match")
    if inm is not None:
        tags = [t.strip() for t in inm.split(",")]
        return "*" in tags or etag in tags or f"W/{etag}" in tags
    ims = headers.get("if-modified-since")
    if ims:
        try:
            return int(mtime) <= int(parsedate_to_datetime(ims).timestamp())
        except (TypeError, ValueError):
            return False
    return False


def parse_range(header: str, size: int) -> tuple[int, int] | None | str:
    """(start, end inclusive), None to serve everything, or "unsatisfiable"."""
    m = _RANGE.match(header.strip())
    if not m:
        return None  # several ranges or a unit we don't serve: whole object
    a, b = m.groups()
    if a == "" and b == "":
        return None
    if a == "":
        n = int(b)
        if n == 0:
            return "unsatisfiable"
        return (max(0, size - n), size - 1)
    start = int(a)
    end = int(b) if b else size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return (start, min(end, size - 1))


def serve(root: Path, path: Path, req_headers: Mapping[str, str], head: bool) -> ServedObject:
    """Build the response for one stored file; raises FileNotFoundError / BadPath."""
    ctype = MEDIA_TYPES.get(path.suffix)
    if ctype is None:
        raise FileNotFoundError(path)
    fd, st = _open_regular(root, path)
    try:
        return respond(
            path.suffix, etag_for(st), st.st_mtime, st.st_size,
            lambda start, length: os.pread(fd, length, start), req_headers, head,
        )  # fmt: skip
    finally:
        os.close(fd)


def serve_bytes(
    name: str, body: bytes, etag: str, mtime: float, req_headers: Mapping[str, str], head: bool
) -> ServedObject:
    """The same response for an object held in memory (read from a remote store)."""
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    if suffix not in MEDIA_TYPES:
        raise FileNotFoundError(name)
    view = memoryview(body)
    return respond(suffix, etag, mtime, len(body), lambda start, length: bytes(view[start : start + length])
                   if (start, length) != (0, len(body)) else body, req_headers, head)  # fmt: skip


def respond(
    suffix: str, etag: str, mtime: float, size: int, read: Callable[[int, int], bytes],
    req_headers: Mapping[str, str], head: bool, last_modified: str | None = None,
    ended: bool | None = None,
) -> ServedObject:  # fmt: skip
    """The response for one object; ``last_modified`` and ``ended`` (a playlist
    with ENDLIST), when the caller already knows them, spare formatting and a read."""
    is_playlist = suffix in PLAYLIST_TYPES
    headers = {
        "content-type": MEDIA_TYPES[suffix],
        "etag": etag,
        "last-modified": last_modified or formatdate(mtime, usegmt=True),
        "accept-ranges": "bytes",
        "cache-control": LIVE_PLAYLIST if is_playlist else IMMUTABLE,
    }
    if _not_modified(req_headers, etag, mtime):
        return ServedObject(304, headers, b"")
    rng: tuple[int, int] | None | str = None
    if "range" in req_headers:
        if_range = req_headers.get("if-range")
        if if_range is None or if_range == etag:
            rng = parse_range(req_headers["range"], size)
    if rng == "unsatisfiable":
        headers["content-range"] = f"bytes */{size}"
        return ServedObject(416, headers, b"")
    if isinstance(rng, tuple):
        start, end = rng
        headers["content-range"] = f"bytes {start}-{end}/{size}"
        status, length = 206, end - start + 1
    else:
        status, start, length = 200, 0, size
    headers["content-length"] = str(length)
    body = b"" if head else read(start, length)
    if ended is None and is_playlist:
        ended = b"#EXT-X-ENDLIST" in (body if length == size and not head else read(0, size))
    if ended:
        headers["cache-control"] = ENDED_PLAYLIST
    return ServedObject(status, headers, body)


# ---------------------------------------------------------------- hot files


@dataclass(frozen=True, slots=True)
class HotFile:
    """One file's bytes with what its responses need, as read at ``ident``."""

    ident: tuple[int, int, int, int]  # st_dev, st_ino, st_mtime_ns, st_size
    suffix: str
    body: bytes
    etag: str
    mtime: float
    last_modified: str
    ended: bool  # a playlist with #EXT-X-ENDLIST


def _ident(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def read_hot(root: Path, path: Path) -> HotFile:
    """Read a file whole (blocking: run it in a thread); raises like ``serve``."""
    suffix = path.suffix
    if suffix not in MEDIA_TYPES:
        raise FileNotFoundError(path)
    fd, st = _open_regular(root, path)
    try:
        chunks, offset = [], 0
        while offset < st.st_size:
            chunk = os.pread(fd, st.st_size - offset, offset)
            if not chunk:
                break  # truncated meanwhile: serve what is there, under a validator that says so
            chunks.append(chunk)
            offset += len(chunk)
    finally:
        os.close(fd)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return HotFile(
        (st.st_dev, st.st_ino, st.st_mtime_ns, len(body)), suffix, body,
        etag_for(st) if len(body) == st.st_size else f'"{len(body):x}-{st.st_mtime_ns:x}"',
        st.st_mtime, formatdate(st.st_mtime, usegmt=True),
        suffix in PLAYLIST_TYPES and b"#EXT-X-ENDLIST" in body,
    )  # fmt: skip


def serve_hot(hot: HotFile, req_headers: Mapping[str, str], head: bool) -> ServedObject:
    """The response for a file held in memory; the same rules as ``serve``."""
    body, size = hot.body, len(hot.body)
    return respond(
        hot.suffix, hot.etag, hot.mtime, size,
        lambda start, length: body if (start, length) == (0, size) else body[start : start + length],
        req_headers, head, last_modified=hot.last_modified, ended=hot.ended,
    )  # fmt: skip


class HotFiles:
    """The bytes of recently served files, least recently used out first.

    Why: live viewers all fetch the same few objects, and reading each from
    disk in a worker thread per request (a thread hand-off, GIL contention, a
    fresh buffer) cost more than the rest of the request. A hit still opens and
    fstat()s the file on the event loop — page-cached metadata, microseconds —
    so the path checks run as before and a rewritten or replaced file (new
    inode, mtime or size) is read again, never served stale. Only reading the
    contents goes to a thread. Objects over ``max_object`` are not kept (a
    large download must not flush the live set).
    """

    def __init__(self, max_bytes: int = 256 << 20, max_object: int = 16 << 20) -> None:
        self.max_bytes, self.max_object = max_bytes, max_object
        self._items: OrderedDict[str, HotFile] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    def lookup(self, root: Path, path: Path) -> HotFile | None:
        """The kept copy if it is still the file on disk; None: read it. Raises
        BadPath / FileNotFoundError / OSError as ``serve`` does."""
        if path.suffix not in MEDIA_TYPES:
            raise FileNotFoundError(path)
        fd, st = _open_regular(root, path)
        os.close(fd)
        key = str(path)
        hot = self._items.get(key)
        if hot is not None and hot.ident == _ident(st):
            self._items.move_to_end(key)
            self.hits += 1
            return hot
        return None

    async def get(self, root: Path, path: Path) -> HotFile:
        hot = self.lookup(root, path)
        if hot is None:
            self.misses += 1
            hot = await asyncio.to_thread(read_hot, root, path)
            self.keep(str(path), hot)
        return hot

    def keep(self, key: str, hot: HotFile) -> None:
        """Remember a file read (on the event loop's thread: no locking needed)."""
        size = len(hot.body)
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= len(old.body)
        if size > self.max_object:
            return
        self._items[key] = hot
        self._bytes += size
        while self._bytes > self.max_bytes and self._items:
            _, gone = self._items.popitem(last=False)
            self._bytes -= len(gone.body)


HOT_FILES = HotFiles()  # one per process: keys are absolute paths, checked on every hit
