"""S3Store: objects in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2, ...).

Every write is one PUT, which S3 makes visible atomically: a reader sees the
whole new object or the old one, never a part — the same contract as the local
store's write-then-rename. Calls run in threads (boto3 is synchronous).
"""

from __future__ import annotations

import asyncio
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from tidecast.store.base import ObjectNotFound, check_key

CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".jpg": "image/jpeg",
}


class S3Store:
    def __init__(
        self, bucket: str, *, endpoint_url: str | None = None, region: str = "us-east-1",
        access_key: str | None = None, secret_key: str | None = None, prefix: str = "",
    ) -> None:  # fmt: skip
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self.prefix = f"{prefix.strip('/')}/" if prefix else ""
        self.client: Any = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region,
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32),
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
        ctype = next(
            (v for k, v in CONTENT_TYPES.items() if key.endswith(k)), "application/octet-stream"
        )
        await asyncio.to_thread(self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data,
                                ContentType=ctype)  # fmt: skip

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
        return await asyncio.to_thread(self._list, prefix)

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
