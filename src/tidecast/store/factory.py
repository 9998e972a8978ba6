"""One place that turns a store URL into a store.

- ``""`` (the embedded default): a local directory, ``<data dir>/media``.
- ``file:///srv/tidecast/media``: a local (or shared, e.g. NFS) directory.
- ``s3://bucket/optional/prefix?endpoint=http://host:9000&region=us-east-1``:
  an S3-compatible bucket. Credentials come the way every AWS SDK takes them
  (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, a profile, an instance role),
  never from the URL, so a URL can be logged and passed on command lines.

``open_store(url, dir)`` returns the plain store: one attempt per operation
(S3 with connect/read timeouts of a few seconds). ``open_store(url, dir,
retry=StoreRetry(deadline=30.0))`` wraps it in a ``RetryingStore``
(store/retrying.py) that retries transient errors with backoff and jitter
until the per-operation deadline; that is what a stage should use. Both are
``VersionedStore``s (conditional writes for ``FencedWriter``). Code that needs
the concrete store (``isinstance(..., LocalStore)``, its ``root``) looks
through the wrapper with ``unwrap(store)``; ``store_url_of`` does so itself.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from tidecast.store.base import Store, VersionedStore
from tidecast.store.local import LocalStore
from tidecast.store.retrying import RetryingStore, StoreRetry, unwrap
from tidecast.store.s3 import S3Store

__all__ = ["StoreRetry", "StoreURLError", "check_store_url", "open_store", "store_url_of", "unwrap"]


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


def open_store(url: str, default_dir: Path, *, retry: StoreRetry | None = None) -> VersionedStore:
    """The store a URL names; with ``retry``, wrapped in a RetryingStore (see the module docstring)."""
    check_store_url(url)
    store: VersionedStore
    parts = urlsplit(url)
    if not url:
        store = LocalStore(default_dir)
    elif parts.scheme == "file":
        store = LocalStore(Path(unquote(parts.path)))
    else:
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        store = S3Store(
            parts.netloc, endpoint_url=query.get("endpoint"), region=query.get("region", "us-east-1"),
            prefix=unquote(parts.path).strip("/"),
        )  # fmt: skip
    return store if retry is None else RetryingStore(store, retry)


def store_url_of(store: Store) -> str:
    """A URL another process (a transcode worker) can open the same store with."""
    store = unwrap(store)
    if isinstance(store, LocalStore):
        return store.root.as_uri()
    if isinstance(store, S3Store):
        url = f"s3://{store.bucket}/{store.prefix.strip('/')}"
        opts = [f"region={store.region}"]
        if store.endpoint_url:
            opts.append(f"endpoint={store.endpoint_url}")
        return url + "?" + "&".join(opts)
    raise StoreURLError(f"no URL for a {type(store).__name__}")
