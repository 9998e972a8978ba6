"""RetryingStore against S3 faults (the S3 API server behind the test's fault proxy), the
S3 client's own timeouts, and which errors count as transient."""

from __future__ import annotations

import asyncio
import errno
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from tests.faultproxy import FaultProxy

from tidecast.metrics import Registry
from tidecast.store import InvalidKey, LocalStore, ObjectNotFound
from tidecast.store.factory import open_store, store_url_of
from tidecast.store.local import LockTimeout
from tidecast.store.retrying import RetryingStore, StoreRetry, is_transient, unwrap
from tidecast.store.s3 import S3Store


def client_error(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")  # fmt: skip


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), True),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
        (client_error(503, "SlowDown"), True),
        (client_error(500, "InternalError"), True),
        (client_error(400, "RequestTimeout"), True),
        (client_error(502, "BadGateway"), True),
        (client_error(403, "AccessDenied"), False),
        (client_error(404, "NoSuchBucket"), False),
        (client_error(412, "PreconditionFailed"), False),
        (OSError(errno.EIO, "I/O error"), True),
        (OSError(errno.ENOSPC, "no space left"), True),
        (LockTimeout("busy"), True),
        (FileNotFoundError(errno.ENOENT, "gone"), False),
        (IsADirectoryError(errno.EISDIR, "a directory"), False),
        (PermissionError(errno.EACCES, "denied"), False),
        (ObjectNotFound("hls/x"), False),
        (InvalidKey("../x"), False),
        (ValueError("bad"), False),
    ],
)
def test_what_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


@pytest.fixture
async def proxied(s3_endpoint: str) -> AsyncIterator[tuple[FaultProxy, S3Store]]:
    with FaultProxy(s3_endpoint) as proxy:
        s3 = S3Store("tidecast-" + secrets.token_hex(4), endpoint_url=proxy.url, access_key="test",
                     secret_key="test", connect_timeout=1.0, read_timeout=0.5)  # fmt: skip
        await s3.ensure_bucket()
        yield proxy, s3


async def test_a_store_outage_is_retried_then_given_up_at_the_deadline(
    proxied: tuple[FaultProxy, S3Store],
) -> None:
    proxy, s3 = proxied
    reg = Registry()
    store = RetryingStore(s3, StoreRetry(deadline=1.0), registry=reg)
    proxy.refuse()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises((EndpointConnectionError, ConnectionClosedError)):
        await store.put("hls/s/000001.m4s", b"x")
    took = loop.time() - started
    assert took < 2.0, f"gave up after {took:.2f} s, the deadline is 1 s"
    assert reg.counter("tidecast_store_failures_total", "", ("op",)).value(op="put") == 1
    assert reg.counter("tidecast_store_retries_total", "", ("op",)).value(op="put") >= 2
    assert proxy.stats().refused >= 3
    proxy.pass_through()
    await store.put("hls/s/000001.m4s", b"x")
    assert await s3.get("hls/s/000001.m4s") == b"x"


async def test_a_stalled_server_costs_the_read_timeout_not_minutes(
    proxied: tuple[FaultProxy, S3Store],
) -> None:
    proxy, s3 = proxied
    await s3.put("hls/s/720p.m3u8", b"#EXTM3U\n")
    proxy.hold("GET", "720p.m3u8")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ReadTimeoutError):
        await s3.get("hls/s/720p.m3u8")
    assert loop.time() - started < 2.0, "the client waited past its read timeout (or retried itself)"
    assert proxy.stats().held == 1, "botocore made more than one attempt"
    reg = Registry()
    store = RetryingStore(s3, StoreRetry(deadline=10.0), registry=reg)
    loop.call_later(0.8, proxy.release)
    assert await store.get("hls/s/720p.m3u8") == b"#EXTM3U\n"
    assert reg.counter("tidecast_store_retries_total", "", ("op",)).value(op="get") >= 1


async def test_an_attempt_still_running_at_the_deadline_is_abandoned(
    proxied: tuple[FaultProxy, S3Store],
) -> None:
    proxy, s3 = proxied
    slow = S3Store(s3.bucket, endpoint_url=proxy.url, access_key="test", secret_key="test", read_timeout=5.0)
    store = RetryingStore(slow, StoreRetry(deadline=0.5), registry=Registry())
    proxy.hold("PUT")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await store.put("hls/s/000002.m4s", b"x")
    assert loop.time() - started < 1.5
    proxy.release()


def test_open_store_with_retry_and_store_url_of_through_the_wrapper(tmp_path: Path) -> None:
    plain = open_store("", tmp_path)
    assert isinstance(plain, LocalStore)
    wrapped = open_store(f"file://{tmp_path}/m", tmp_path, retry=StoreRetry(deadline=3.0))
    assert isinstance(wrapped, RetryingStore) and wrapped.policy.deadline == 3.0
    assert isinstance(unwrap(wrapped), LocalStore)
    assert store_url_of(wrapped) == (tmp_path / "m").as_uri()
    s3 = open_store("s3://media/live?endpoint=http://127.0.0.1:9&region=eu-west-1", tmp_path,
                    retry=StoreRetry())  # fmt: skip
    assert store_url_of(s3) == "s3://media/live?region=eu-west-1&endpoint=http://127.0.0.1:9"
    with pytest.raises(ValueError):
        StoreRetry(deadline=0)
