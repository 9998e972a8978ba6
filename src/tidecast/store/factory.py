"""One place that turns a store URL into a store.

- ``""`` (the embedded default): a local directory, ``<data dir>/media``.
- ``file:///srv/tidecast/media``: a local (or shared, e.g. NFS) directory.
- ``s3://bucket/optional/prefix?endpoint=http://host:9000&region=us-east-1``:
  an S3-compatible bucket. Credentials come the way every AWS SDK takes them
  (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, a profile, an instance role),
  never from the URL, so a URL can be logged and passed on command lines.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from tidecast.store.base import Store
from tidecast.store.local import LocalStore
from tidecast.store.s3 import S3Store


class StoreURLError(ValueError):
    """A store URL tidecast cannot use."""


def check_store_url(url: str) -> None:
    if not url:
        return
    parts = urlsplit(url)
    if parts.scheme == "file":
        if not unquote(parts.path).startswith("/"):
            raise StoreURLError(f"file store URLs need an absolute path: {url!r}")
    elif parts.scheme == "s3":
        if not parts.netloc:
            raise StoreURLError(f"s3 store URLs name a bucket: s3://bucket/prefix, got {url!r}")
        unknown = set(parse_qs(parts.query)) - {"endpoint", "region"}
        if unknown:
            raise StoreURLError(f"unknown s3 store option(s) {sorted(unknown)} in {url!r}")
    else:
        raise StoreURLError(f"store URL must be file:///path or s3://bucket/prefix, got {url!r}")


def open_store(url: str, default_dir: Path) -> Store:
    """The store a URL names (see the module docstring)."""
    check_store_url(url)
    if not url:
        return LocalStore(default_dir)
    parts = urlsplit(url)
    if parts.scheme == "file":
        return LocalStore(Path(unquote(parts.path)))
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return S3Store(
        parts.netloc, endpoint_url=query.get("endpoint"), region=query.get("region", "us-east-1"),
        prefix=unquote(parts.path).strip("/"),
    )  # fmt: skip


def store_url_of(store: Store) -> str:
    """A URL another process (a transcode worker) can open the same store with."""
    if isinstance(store, LocalStore):
        return store.root.as_uri()
    if isinstance(store, S3Store):
        url = f"s3://{store.bucket}/{store.prefix.strip('/')}"
        opts = [f"region={store.region}"]
        if store.endpoint_url:
            opts.append(f"endpoint={store.endpoint_url}")
        return url + "?" + "&".join(opts)
    raise StoreURLError(f"no URL for a {type(store).__name__}")
