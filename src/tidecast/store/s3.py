"""S3Store: objects in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2, ...).

Every write is one PUT, which S3 makes visible atomically: a reader sees the
whole new object or the old one, never a part — the same contract as the local
store's write-then-rename. Calls run in threads (boto3 is synchronous).

Conditional writes: ``put_if`` is one PutObject with ``If-Match: <ETag>`` (or
``If-None-Match: *`` to create only), which S3, MinIO and Ceph evaluate
atomically; the version is the ETag. A 412 (or 409 ConditionalRequestConflict:
a concurrent conditional write won) is a failed precondition.

The client has explicit connect and read timeouts (a few seconds) and makes a
single attempt: retrying is the job of ``RetryingStore`` (store/retrying.py),
with backoff, jitter and a deadline, so a stopped S3 server costs a stage
seconds, not botocore's minutes. ``is_transient`` says what is worth retrying:
connection errors, timeouts, HTTP 5xx and S3's SlowDown / RequestTimeout /
InternalError.
"""

from __future__ import annotations

import asyncio
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotoConnectionError

from tidecast.store.base import ObjectNotFound, check_key

CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".jpg": "image/jpeg",
}
TRANSIENT_CODES = frozenset({
    "SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling",
    "ThrottlingException", "RequestLimitExceeded", "OperationAborted",
})  # fmt: skip
PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"})


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def is_transient(exc: BaseException) -> bool:
    """An S3 error worth retrying: the connection, a timeout, or the server's 5xx/throttling."""
    if isinstance(exc, HTTPClientError | BotoConnectionError | IncompleteReadError):
        return True
    if isinstance(exc, ClientError):
        return _status(exc) >= 500 or _code(exc) in TRANSIENT_CODES
    return False


def _content_type(key: str) -> str:
    return next((v for k, v in CONTENT_TYPES.items() if key.endswith(k)), "application/octet-stream")


class S3Store:
    def __init__(
        self, bucket: str, *, endpoint_url: str | None = None, region: str = "us-east-1",
        access_key: str | None = None, secret_key: str | None = None, prefix: str = "",
        connect_timeout: float = 2.0, read_timeout: float = 5.0,
    ) -> None:  # fmt: skip
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self.prefix = f"{prefix.strip('/')}/" if prefix else ""
        self.client: Any = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region,
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, max_pool_connections=32,
                          connect_timeout=connect_timeout, read_timeout=read_timeout),
        )  # fmt: skip

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    async def ensure_bucket(self) -> None:
        def make() -> None:
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError:
                self.client.create_bucket(Bucket=self.bucket)

        await asyncio.to_thread(make)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data,
                                ContentType=_content_type(key))  # fmt: skip

    async def put_if(self, key: str, data: bytes, version: str | None) -> str | None:
        cond = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        full = self._key(key)

        def write() -> str | None:
            try:
                out = self.client.put_object(Bucket=self.bucket, Key=full, Body=data,
                                             ContentType=_content_type(key), **cond)  # fmt: skip
            except ClientError as exc:
                if _status(exc) == 412 or _code(exc) in PRECONDITION_CODES:
                    return None
                raise
            return str(out["ETag"])

        return await asyncio.to_thread(write)

    async def get_versioned(self, key: str) -> tuple[bytes, str]:
        full = self._key(key)

        def read() -> tuple[bytes, str]:
            try:
                out = self.client.get_object(Bucket=self.bucket, Key=full)
                return bytes(out["Body"].read()), str(out["ETag"])
            except ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404"):
                    raise ObjectNotFound(key) from None
                raise

        return await asyncio.to_thread(read)

    async def get(self, key: str) -> bytes:
        def read() -> bytes:
            try:
                return bytes(
                    self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    raise ObjectNotFound(key) from None
                raise

        return await asyncio.to_thread(read)

    async def exists(self, key: str) -> bool:
        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
                return True
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise

        return await asyncio.to_thread(head)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def _list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        full = self.prefix + (prefix.rstrip("/") + "/" if prefix else "")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            keys += [o["Key"][len(self.prefix) :] for o in page.get("Contents", [])]
        return sorted(keys)

    async def list(self, prefix: str) -> list[str]:
        prefix = prefix.rstrip("/")
        return await asyncio.to_thread(self._list, check_key(prefix) if prefix else "")

    async def delete_prefix(self, prefix: str) -> int:
        def remove() -> int:
            keys = self._list(check_key(prefix))
            for i in range(0, len(keys), 1000):
                chunk = [{"Key": self.prefix + k} for k in keys[i : i + 1000]]
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True}
                )
            return len(keys)

        return await asyncio.to_thread(remove)
