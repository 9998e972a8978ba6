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
  lies under the root.
"""

from __future__ import annotations

import os
import re
import stat
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


def _open_regular(root: Path, path: Path) -> tuple[int, os.stat_result]:
    """Open a regular, non-symlink file whose real path lies below root."""
    real = os.path.realpath(path)
    if not real.startswith(str(root) + os.sep):
        raise BadPath("outside the media root")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FileNotFoundError(path)
    return fd, st


def etag_for(st: os.stat_result) -> str:
    return f'"{st.st_size:x}-{st.st_mtime_ns:x}"'


def _not_modified(headers: dict[str, str], etag: str, mtime: float) -> bool:
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


def serve(root: Path, path: Path, req_headers: dict[str, str], head: bool) -> ServedObject:
    """Build the response for one stored object; raises FileNotFoundError / BadPath."""
    ctype = MEDIA_TYPES.get(path.suffix)
    if ctype is None:
        raise FileNotFoundError(path)
    fd, st = _open_regular(root, path)
    try:
        etag = etag_for(st)
        is_playlist = path.suffix in PLAYLIST_TYPES
        headers = {
            "content-type": ctype,
            "etag": etag,
            "last-modified": formatdate(st.st_mtime, usegmt=True),
            "accept-ranges": "bytes",
        }
        if is_playlist:
            headers["cache-control"] = LIVE_PLAYLIST
        else:
            headers["cache-control"] = IMMUTABLE
        if _not_modified(req_headers, etag, st.st_mtime):
            return ServedObject(304, headers, b"")
        size = st.st_size
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
        body = b"" if head else os.pread(fd, length, start)
        if is_playlist and b"#EXT-X-ENDLIST" in (body or os.pread(fd, size, 0)):
            headers["cache-control"] = ENDED_PLAYLIST
        return ServedObject(status, headers, body)
    finally:
        os.close(fd)
