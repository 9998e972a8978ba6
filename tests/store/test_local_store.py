from __future__ import annotations

import asyncio
import fcntl
import os
import sys
from pathlib import Path

import pytest

from tidecast.metrics import Registry
from tidecast.retry import Backoff
from tidecast.store import InvalidKey, LocalStore, ObjectNotFound
from tidecast.store.local import LockTimeout
from tidecast.store.retrying import RetryingStore, StoreRetry


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
    assert await store.list("hls") == ["hls/main/b1/source/000001.m4s"]  # no temporary files listed
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


async def test_versions_change_on_every_write_even_with_the_same_bytes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    seen = set()
    version: str | None = None
    for _ in range(50):  # faster than a coarse file-system clock ticks
        version = await store.put_if("hls/s/720p.m3u8", b"same", version)
        assert version is not None
        seen.add(version)
        await store.put("hls/s/plain.m3u8", b"same")
        seen.add((await store.get_versioned("hls/s/plain.m3u8"))[1])
    assert len(seen) == 100


async def test_lock_files_are_hidden_and_go_with_their_prefix(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    v = await store.put_if("hls/s/720p.m3u8", b"1", None)
    await store.put_if("hls/s/720p.m3u8", b"2", v)
    await store.put("hls/t/x.m4s", b"x")
    assert (tmp_path / ".locks/hls/s/720p.m3u8").is_file()
    assert await store.list("") == ["hls/s/720p.m3u8", "hls/t/x.m4s"]
    assert await store.delete_prefix("hls/s") == 1
    assert not (tmp_path / ".locks/hls/s").exists()
    assert await store.list("") == ["hls/t/x.m4s"]
    assert await store.put_if("hls/s/720p.m3u8", b"3", None) is not None  # the lock is made again


CAS_SCRIPT = """
import asyncio, sys
from pathlib import Path
from tidecast.store import LocalStore

async def main() -> None:
    store = LocalStore(Path(sys.argv[1]))
    for _ in range(int(sys.argv[2])):
        for _attempt in range(1000):
            body, version = await store.get_versioned("hls/counter")
            if await store.put_if("hls/counter", str(int(body) + 1).encode(), version):
                break
        else:
            sys.exit("1000 lost races in a row")

asyncio.run(main())
"""


async def test_two_processes_never_both_win(tmp_path: Path) -> None:
    """A compare-and-swap counter bumped by two processes at once loses no update."""
    store = LocalStore(tmp_path)
    await store.put("hls/counter", b"0")
    procs = [await asyncio.create_subprocess_exec(sys.executable, "-c", CAS_SCRIPT, str(tmp_path), "60")
             for _ in range(2)]  # fmt: skip
    async with asyncio.timeout(60):
        codes = [await p.wait() for p in procs]
    assert codes == [0, 0]
    assert await store.get("hls/counter") == b"120"


def hold_lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


async def test_a_busy_lock_is_transient_and_retried_until_free(tmp_path: Path) -> None:
    reg = Registry()
    inner = LocalStore(tmp_path, lock_timeout=0.1)
    store = RetryingStore(inner, StoreRetry(deadline=10.0, backoff=Backoff(0.05, 0.2)), registry=reg)
    v = await store.put_if("hls/s/720p.m3u8", b"1", None)
    fd = hold_lock(tmp_path / ".locks/hls/s/720p.m3u8")  # another writer holds the key
    with pytest.raises(LockTimeout):
        await inner.put_if("hls/s/720p.m3u8", b"2", v)
    loop = asyncio.get_running_loop()
    loop.call_later(0.6, os.close, fd)
    started = loop.time()
    assert await store.put_if("hls/s/720p.m3u8", b"2", v) is not None
    assert loop.time() - started >= 0.5
    assert reg.counter("tidecast_store_retries_total", "", ("op",)).value(op="put_if") >= 2
    assert reg.counter("tidecast_store_failures_total", "", ("op",)).value(op="put_if") == 0
    fd = hold_lock(tmp_path / ".locks/hls/s/720p.m3u8")
    try:
        with pytest.raises(LockTimeout):  # a plain put of a key with a lock file waits for it too
            await inner.put("hls/s/720p.m3u8", b"3")
    finally:
        os.close(fd)


async def test_the_retry_deadline_ends_in_a_counted_failure(tmp_path: Path) -> None:
    reg = Registry()
    store = RetryingStore(LocalStore(tmp_path, lock_timeout=0.05), StoreRetry(deadline=0.5), registry=reg)
    await store.put_if("hls/s/720p.m3u8", b"1", None)
    fd = hold_lock(tmp_path / ".locks/hls/s/720p.m3u8")
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(LockTimeout):
            await store.put("hls/s/720p.m3u8", b"2")
        assert asyncio.get_running_loop().time() - started < 1.5
    finally:
        os.close(fd)
    assert reg.counter("tidecast_store_failures_total", "", ("op",)).value(op="put") == 1
    assert reg.counter("tidecast_store_retries_total", "", ("op",)).value(op="put") >= 1


async def test_permanent_errors_are_not_retried(tmp_path: Path) -> None:
    reg = Registry()
    store = RetryingStore(LocalStore(tmp_path), StoreRetry(deadline=10.0), registry=reg)
    await store.put("hls/s/b1/000001.m4s", b"x")
    started = asyncio.get_running_loop().time()
    with pytest.raises(ObjectNotFound):
        await store.get("hls/s/b1/000002.m4s")
    with pytest.raises(InvalidKey):
        await store.put("hls/../x", b"x")
    with pytest.raises(IsADirectoryError):  # the key names a directory
        await store.put("hls/s/b1", b"x")
    with pytest.raises((FileExistsError, NotADirectoryError)):  # a part of the key is an object
        await store.put("hls/s/b1/000001.m4s/x", b"x")
    assert asyncio.get_running_loop().time() - started < 1.0
    retries = reg.counter("tidecast_store_retries_total", "", ("op",))
    failures = reg.counter("tidecast_store_failures_total", "", ("op",))
    assert retries.value(op="get") == retries.value(op="put") == 0
    assert failures.value(op="get") == 0 and failures.value(op="put") == 2  # not-found is an answer
