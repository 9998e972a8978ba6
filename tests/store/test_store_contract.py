"""One contract, every store: the local directory and S3 — against an S3 API server
(moto's) running as its own process, started here, spoken to over HTTP by boto3."""

from __future__ import annotations

import asyncio
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tidecast.store import InvalidKey, LocalStore, ObjectNotFound
from tidecast.store.s3 import S3Store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("the S3 API server did not start")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "local":
        yield LocalStore(tmp_path / "root")
        return
    s3 = S3Store("tidecast-" + secrets.token_hex(4), endpoint_url=request.getfixturevalue("s3_endpoint"),
                 access_key="test", secret_key="test", prefix="media")  # fmt: skip
    await s3.ensure_bucket()
    yield s3


async def test_put_get_exists_delete(store: Any) -> None:
    await store.put("hls/s/b1/720p/000001.m4s", b"\x00" * 1000)
    assert await store.get("hls/s/b1/720p/000001.m4s") == b"\x00" * 1000
    assert await store.exists("hls/s/b1/720p/000001.m4s")
    assert not await store.exists("hls/s/b1/720p/000002.m4s")
    with pytest.raises(ObjectNotFound):
        await store.get("hls/s/nothing.m3u8")
    await store.delete("hls/s/b1/720p/000001.m4s")
    assert not await store.exists("hls/s/b1/720p/000001.m4s")


async def test_list_and_delete_prefix(store: Any) -> None:
    for k in ("hls/a/b1/x.m4s", "hls/a/b1/y.m4s", "hls/a/b2/z.m4s", "hls/ab/w.m4s"):
        await store.put(k, b"1")
    assert await store.list("hls/a/b1") == ["hls/a/b1/x.m4s", "hls/a/b1/y.m4s"]
    assert await store.list("hls/a") == ["hls/a/b1/x.m4s", "hls/a/b1/y.m4s", "hls/a/b2/z.m4s"]
    assert await store.delete_prefix("hls/a/b1") == 2
    assert await store.list("hls") == ["hls/a/b2/z.m4s", "hls/ab/w.m4s"]


async def test_overwrites_are_atomic_for_readers(store: Any) -> None:
    versions = [bytes([i]) * 200_000 for i in range(6)]
    await store.put("hls/s/index.m3u8", versions[0])
    seen: list[bytes] = []

    async def reader() -> None:
        for _ in range(15):
            seen.append(await store.get("hls/s/index.m3u8"))

    async def writer() -> None:
        for v in versions[1:]:
            await store.put("hls/s/index.m3u8", v)

    await asyncio.gather(reader(), writer(), reader())
    assert all(s in versions for s in seen), "a reader saw a partial object"


@pytest.mark.parametrize("key", ["../x", "hls/../../x", "/abs", "hls//x", "hls/.hidden", ""])
async def test_bad_keys_are_refused(store: Any, key: str) -> None:
    with pytest.raises(InvalidKey):
        await store.put(key, b"x")
