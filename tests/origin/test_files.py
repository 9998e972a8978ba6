"""Origin object serving: types, caching, ranges, conditional requests, no way out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tidecast.origin import files


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "media"
    (r / "hls" / "main" / "b1" / "source").mkdir(parents=True)
    (r / "hls" / "main" / "source.m3u8").write_text("#EXTM3U\n#EXT-X-TARGETDURATION:2\n")
    (r / "hls" / "main" / "b1" / "source" / "000000.m4s").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "secret.m4s").write_bytes(b"secret")
    return r.resolve()


def get(root: Path, path: str, headers: dict[str, str] | None = None, raw: str | None = None) -> files.ServedObject:
    target = files.resolve(root / "hls", raw or path, path)
    return files.serve(root, target, headers or {}, head=False)


def test_types_and_cache_control(root: Path) -> None:
    pl = get(root, "main/source.m3u8")
    assert pl.status == 200
    assert pl.headers["content-type"] == "application/vnd.apple.mpegurl"
    assert "max-age=1" in pl.headers["cache-control"]
    seg = get(root, "main/b1/source/000000.m4s")
    assert seg.headers["content-type"] == "video/iso.segment"
    assert "immutable" in seg.headers["cache-control"]
    assert len(seg.body) == 1024


def test_ended_playlist_caches_longer(root: Path) -> None:
    (root / "hls" / "main" / "source.m3u8").write_text("#EXTM3U\n#EXT-X-ENDLIST\n")
    assert get(root, "main/source.m3u8").headers["cache-control"] == files.ENDED_PLAYLIST


@pytest.mark.parametrize(
    ("header", "status", "content_range", "body_slice"),
    [
        ("bytes=0-9", 206, "bytes 0-9/1024", slice(0, 10)),
        ("bytes=1000-", 206, "bytes 1000-1023/1024", slice(1000, 1024)),
        ("bytes=-24", 206, "bytes 1000-1023/1024", slice(1000, 1024)),
        ("bytes=1000-5000", 206, "bytes 1000-1023/1024", slice(1000, 1024)),
        ("bytes=2000-", 416, "bytes */1024", slice(0, 0)),
        ("bytes=0-1,5-6", 200, None, slice(0, 1024)),
    ],
)
def test_ranges(root: Path, header: str, status: int, content_range: str | None, body_slice: slice) -> None:
    full = (root / "hls/main/b1/source/000000.m4s").read_bytes()
    r = get(root, "main/b1/source/000000.m4s", {"range": header})
    assert r.status == status
    assert r.headers.get("content-range") == content_range
    assert r.body == full[body_slice]


def test_conditional_requests(root: Path) -> None:
    first = get(root, "main/b1/source/000000.m4s")
    etag, lm = first.headers["etag"], first.headers["last-modified"]
    assert get(root, "main/b1/source/000000.m4s", {"if-none-match": etag}).status == 304
    assert get(root, "main/b1/source/000000.m4s", {"if-modified-since": lm}).status == 304
    assert get(root, "main/b1/source/000000.m4s", {"if-none-match": '"other"'}).status == 200
    # If-Range with a stale validator: the whole object, not the range
    r = get(root, "main/b1/source/000000.m4s", {"range": "bytes=0-9", "if-range": '"stale"'})
    assert r.status == 200 and len(r.body) == 1024


@pytest.mark.parametrize(
    ("decoded", "raw"),
    [
        ("../secret.m4s", None),
        ("main/../../secret.m4s", None),
        ("main/%2e%2e/x.m4s", None),
        ("main/b1%2F..%2F..%2Fsecret.m4s", "main/b1%2F..%2F..%2Fsecret.m4s"),
        ("main/..\\..\\secret.m4s", None),
        ("", None),
        ("main//source.m3u8", None),
    ],
)
def test_path_tricks_are_refused(root: Path, decoded: str, raw: str | None) -> None:
    with pytest.raises(files.BadPath):
        get(root, decoded, raw=raw)


def test_symlinks_are_not_followed(root: Path) -> None:
    link = root / "hls" / "main" / "leak.m4s"
    os.symlink(root.parent / "secret.m4s", link)
    with pytest.raises((files.BadPath, OSError)):
        get(root, "main/leak.m4s")
    inner = root / "hls" / "main" / "inner.m4s"
    os.symlink(root / "hls/main/b1/source/000000.m4s", inner)
    with pytest.raises(OSError):  # even inside the root: O_NOFOLLOW
        get(root, "main/inner.m4s")


def test_unknown_types_are_not_served(root: Path) -> None:
    (root / "hls" / "main" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError):
        get(root, "main/notes.txt")
