from __future__ import annotations

from pathlib import Path

import pytest

from tidecast.store import InvalidKey, LocalStore, ObjectNotFound


async def test_put_get_list_delete(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await store.put("hls/main/b1/source/000001.m4s", b"abc")
    await store.put("hls/main/source.m3u8", b"#EXTM3U\n")
    assert await store.get("hls/main/b1/source/000001.m4s") == b"abc"
    assert await store.list("hls/main") == ["hls/main/b1/source/000001.m4s", "hls/main/source.m3u8"]
    await store.put("hls/main/source.m3u8", b"#EXTM3U\n#EXT-X-ENDLIST\n")
    assert (await store.get("hls/main/source.m3u8")).endswith(b"ENDLIST\n")
    await store.delete("hls/main/source.m3u8")
    assert not await store.exists("hls/main/source.m3u8")
    with pytest.raises(ObjectNotFound):
        await store.get("hls/main/source.m3u8")
    # no temporary files are left behind
    assert not await store.list("hls/main/.tmp")  # no temporary files are listed
    leftovers = [p for p in sorted(tmp_path.rglob("*")) if p.name.startswith(".tmp-")]  # noqa: ASYNC240
    assert not leftovers


@pytest.mark.parametrize(
    "key", ["../etc/passwd", "hls/../../x", "/abs", "hls//x", "hls/./x", "", "hls/x\\y", "hls/.hidden"]
)
async def test_keys_that_escape_are_refused(tmp_path: Path, key: str) -> None:
    store = LocalStore(tmp_path / "root")
    with pytest.raises(InvalidKey):
        await store.put(key, b"x")
    assert not (tmp_path / "etc").exists()
