"""Hot files: served from memory, yet never stale and never from outside the root."""

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
    return r.resolve()


async def get(hot: files.HotFiles, root: Path, path: str, headers: dict[str, str] | None = None,
              head: bool = False) -> files.ServedObject:  # fmt: skip
    target = files.resolve(root / "hls", path, path)
    return files.serve_hot(await hot.get(root, target), headers or {}, head)


async def test_same_responses_as_a_cold_read(root: Path) -> None:
    hot = files.HotFiles()
    for path, headers in [
        ("main/b1/source/000000.m4s", {}),
        ("main/b1/source/000000.m4s", {"range": "bytes=1000-"}),
        ("main/b1/source/000000.m4s", {"range": "bytes=2000-"}),
        ("main/source.m3u8", {}),
    ]:
        for _ in range(2):  # a miss, then a hit
            cold = files.serve(root, files.resolve(root / "hls", path, path), headers, head=False)
            assert await get(hot, root, path, headers) == cold
    etag = (await get(hot, root, "main/source.m3u8")).headers["etag"]
    assert (await get(hot, root, "main/source.m3u8", {"if-none-match": etag})).status == 304
    assert (await get(hot, root, "main/source.m3u8", head=True)).body == b""
    assert (hot.hits, hot.misses) == (9, 2)  # one read per file


async def test_a_replaced_or_rewritten_file_is_read_again(root: Path) -> None:
    hot = files.HotFiles()
    pl = root / "hls" / "main" / "source.m3u8"
    assert b"ENDLIST" not in (await get(hot, root, "main/source.m3u8")).body
    tmp = pl.with_name(".tmp-x")
    tmp.write_text("#EXTM3U\n#EXT-X-ENDLIST\n")
    os.replace(tmp, pl)  # how the store writes: a new inode
    served = await get(hot, root, "main/source.m3u8")
    assert b"ENDLIST" in served.body and served.headers["cache-control"] == files.ENDED_PLAYLIST
    with pl.open("r+b") as f:  # in place, same size: only the mtime tells
        f.write(b"#EXTM3U\n#EXT-X-ENDLIS!\n")
    st = pl.stat()
    os.utime(pl, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert b"ENDLIS!" in (await get(hot, root, "main/source.m3u8")).body


async def test_checks_still_apply_to_kept_files(root: Path, tmp_path: Path) -> None:
    hot = files.HotFiles()
    seg = "main/b1/source/000000.m4s"
    await get(hot, root, seg)
    # the directory swapped for a symlink to the same bytes outside the root
    outside = tmp_path / "outside"
    (root / "hls" / "main" / "b1").rename(outside)
    os.symlink(outside, root / "hls" / "main" / "b1")
    with pytest.raises(files.BadPath):
        await get(hot, root, seg)
    os.unlink(root / "hls" / "main" / "b1")
    with pytest.raises(FileNotFoundError):
        await get(hot, root, seg)


def test_the_byte_budget_is_kept() -> None:
    hot = files.HotFiles(max_bytes=250, max_object=100)
    for i in range(5):
        hot.keep(f"/k{i}", files.HotFile((0, i, 0, 80), ".m4s", b"x" * 80, '"e"', 0.0, "", False))
    hot.keep("/big", files.HotFile((0, 9, 0, 101), ".m4s", b"x" * 101, '"e"', 0.0, "", False))
    assert list(hot._items) == ["/k2", "/k3", "/k4"]
