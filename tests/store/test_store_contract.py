"""One contract, every store: the local directory and S3 — against an S3 API server
(moto's) running as its own process, started here, spoken to over HTTP by boto3 —
each also behind a RetryingStore, which must keep the same contract."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import pytest

from tidecast.metrics import Registry
from tidecast.store import FencedWriter, InvalidKey, LocalStore, ObjectNotFound, StaleEpoch
from tidecast.store.retrying import RetryingStore, StoreRetry, unwrap
from tidecast.store.s3 import S3Store


@pytest.fixture(params=["local", "s3", "retrying-local", "retrying-s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    kind = str(request.param)
    inner: Any
    if kind.endswith("local"):
        inner = LocalStore(tmp_path / "root")
    else:
        inner = S3Store("tidecast-" + secrets.token_hex(4), endpoint_url=request.getfixturevalue("s3_endpoint"),
                        access_key="test", secret_key="test", prefix="media")  # fmt: skip
        await inner.ensure_bucket()
    if kind.startswith("retrying"):
        return RetryingStore(inner, StoreRetry(deadline=5.0), registry=Registry())
    return inner


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
    with pytest.raises(InvalidKey):
        await store.put_if(key, b"x", None)
    with pytest.raises(InvalidKey):
        await store.get_versioned(key)
    if key:  # "" lists the whole store
        with pytest.raises(InvalidKey):
            await store.list(key)


# -- conditional writes ---------------------------------------------------------------


async def test_put_if_none_creates_only(store: Any) -> None:
    v1 = await store.put_if("hls/s/720p.m3u8", b"first", None)
    assert isinstance(v1, str) and v1
    assert await store.put_if("hls/s/720p.m3u8", b"second", None) is None
    assert await store.get_versioned("hls/s/720p.m3u8") == (b"first", v1)
    assert await store.get("hls/s/720p.m3u8") == b"first"


async def test_put_if_matches_the_stored_version_only(store: Any) -> None:
    key = "hls/s/720p.m3u8"
    v1 = await store.put_if(key, b"one", None)
    v2 = await store.put_if(key, b"two", v1)
    assert v2 is not None and v2 != v1
    assert await store.get_versioned(key) == (b"two", v2)
    assert await store.put_if(key, b"three", v1) is None, "a stale version must not match"
    assert await store.get(key) == b"two"
    await store.put(key, b"plain")  # a plain write changes the version too
    assert await store.put_if(key, b"four", v2) is None
    _, v3 = await store.get_versioned(key)
    assert v3 not in (v1, v2)
    await store.delete(key)
    assert await store.put_if(key, b"five", v3) is None, "a deleted key has no version to match"
    assert not await store.exists(key)
    assert await store.put_if("hls/s/never.m3u8", b"x", v1) is None
    with pytest.raises(ObjectNotFound):
        await store.get_versioned("hls/s/never.m3u8")


async def test_concurrent_put_if_exactly_one_wins(store: Any) -> None:
    for round_ in range(3):
        key = f"hls/s/race{round_}.m3u8"
        created = await asyncio.gather(*(store.put_if(key, b"c%d" % i, None) for i in range(6)))
        assert sum(v is not None for v in created) == 1, created
        winner = next(i for i, v in enumerate(created) if v is not None)
        body, version = await store.get_versioned(key)
        assert body == b"c%d" % winner and version == created[winner]
        updated = await asyncio.gather(*(store.put_if(key, b"u%d" % i, version) for i in range(6)))
        assert sum(v is not None for v in updated) == 1, updated
        winner = next(i for i, v in enumerate(updated) if v is not None)
        assert await store.get(key) == b"u%d" % winner


async def test_compare_and_swap_counter_loses_no_update(store: Any) -> None:
    key = "hls/s/counter"
    await store.put(key, b"0")

    async def bump(times: int) -> int:
        lost = 0
        for _ in range(times):
            for _attempt in range(200):
                body, version = await store.get_versioned(key)
                if await store.put_if(key, str(int(body) + 1).encode(), version) is not None:
                    break
                lost += 1
            else:
                raise AssertionError("200 lost races in a row")
        return lost

    lost = await asyncio.gather(*(bump(8) for _ in range(4)))
    assert await store.get(key) == b"32", f"updates were lost (races lost: {lost})"


# -- fencing ---------------------------------------------------------------------------


def epoch_of(data: bytes) -> int:
    first = data.split(b"\n", 1)[0]
    return int(first.removeprefix(b"epoch=")) if first.startswith(b"epoch=") else 0


def stamped(epoch: int, text: str) -> bytes:
    return f"epoch={epoch}\n{text}".encode()


class CountedStore:
    """A real store whose conditional calls are counted (instrumentation, not a stand-in)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[str] = []

    async def put_if(self, key: str, data: bytes, version: str | None) -> str | None:
        self.calls.append("put_if")
        result: str | None = await self.inner.put_if(key, data, version)
        return result

    async def get_versioned(self, key: str) -> tuple[bytes, str]:
        self.calls.append("get_versioned")
        result: tuple[bytes, str] = await self.inner.get_versioned(key)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_fenced_writes_are_one_put_each_in_the_normal_case(store: Any) -> None:
    counted = CountedStore(store)
    fence = FencedWriter(counted, registry=Registry())
    for i in range(4):
        await fence.put("hls/s/720p.m3u8", stamped(1, f"#{i}"), 1, epoch_of)
    assert counted.calls == ["put_if"] * 4
    assert await store.get("hls/s/720p.m3u8") == stamped(1, "#3")


async def test_a_newer_epoch_fences_the_older_writer(store: Any) -> None:
    key = "hls/s/720p.m3u8"
    reg = Registry()
    old, new = FencedWriter(store, registry=reg), FencedWriter(store, registry=reg)
    await old.put(key, stamped(1, "old-a"), 1, epoch_of)
    await new.put(key, stamped(2, "new-a"), 2, epoch_of)  # the takeover: create-only fails, re-read, ok
    with pytest.raises(StaleEpoch) as refused:
        await old.put(key, stamped(1, "old-b"), 1, epoch_of)  # its remembered version is stale
    assert (refused.value.key, refused.value.stored_epoch, refused.value.epoch) == (key, 2, 1)
    assert await store.get(key) == stamped(2, "new-a")
    with pytest.raises(StaleEpoch):
        await FencedWriter(store, registry=reg).put(key, stamped(1, "x"), 1, epoch_of)  # fresh writer
    await new.put(key, stamped(2, "new-b"), 2, epoch_of)
    await old.put(key, stamped(3, "again"), 3, epoch_of)  # a newer epoch is accepted
    assert await store.get(key) == stamped(3, "again")
    assert reg.counter("tidecast_store_fenced_refused_total", "").value() == 2
    assert reg.counter("tidecast_store_fenced_conflicts_total", "").value() >= 3


async def test_same_or_older_stored_epoch_is_overwritten_after_a_recheck(store: Any) -> None:
    key = "hls/s/480p.m3u8"
    a = CountedStore(store)
    fa, fb = FencedWriter(a, registry=Registry()), FencedWriter(store, registry=Registry())
    await fa.put(key, stamped(2, "a1"), 2, epoch_of)
    await fb.put(key, stamped(2, "b1"), 2, epoch_of)  # another writer, same epoch
    a.calls.clear()
    await fa.put(key, stamped(2, "a2"), 2, epoch_of)
    assert a.calls == ["put_if", "get_versioned", "put_if"], "the other write is seen through the version cache"
    await store.put(key, b"no stamp at all")  # epoch 0
    await fa.put(key, stamped(2, "a3"), 2, epoch_of)
    assert await store.get(key) == stamped(2, "a3")
    await store.delete(key)
    await fa.put(key, stamped(2, "a4"), 2, epoch_of)  # deleted meanwhile: recreated
    assert await store.get(key) == stamped(2, "a4")


async def test_epoch_of_errors_write_nothing(store: Any) -> None:
    key = "hls/s/360p.m3u8"
    await store.put(key, b"epoch=garbage\n")
    with pytest.raises(ValueError):
        await FencedWriter(store, registry=Registry()).put(key, stamped(5, "x"), 5, epoch_of)
    assert await store.get(key) == b"epoch=garbage\n"


async def test_racing_epochs_leave_the_newest(store: Any) -> None:
    key = "hls/s/race.m3u8"
    writers = [FencedWriter(store, registry=Registry()) for _ in range(5)]
    results = await asyncio.gather(
        *(w.put(key, stamped(e, f"w{e}"), e, epoch_of) for e, w in enumerate(writers, 1)),
        return_exceptions=True,
    )
    assert all(r is None or isinstance(r, StaleEpoch) for r in results), results
    assert results[4] is None
    assert await store.get(key) == stamped(5, "w5")


async def test_retrying_store_forwards_what_it_wraps(store: Any) -> None:
    inner = unwrap(store)
    if isinstance(inner, LocalStore):
        assert store.root == inner.root and store.path_for("hls/x") == inner.root / "hls/x"
    else:
        assert store.bucket == inner.bucket
        await store.ensure_bucket()
