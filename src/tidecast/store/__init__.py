"""Object store: where media segments and manifests live.

Stages name objects by key (``hls/<stream>/...``); the store decides where the
bytes go. Embedded default: a local directory. Scale-out: an S3-compatible store.
``store.retrying.RetryingStore`` retries transient errors (imported from its module:
it pulls in the S3 client); ``FencedWriter`` refuses stale-epoch writes.
"""

from tidecast.store.base import InvalidKey, ObjectNotFound, Store, VersionedStore
from tidecast.store.fenced import FencedWriter, StaleEpoch
from tidecast.store.local import LocalStore

__all__ = [
    "FencedWriter", "InvalidKey", "LocalStore", "ObjectNotFound", "StaleEpoch", "Store",
    "VersionedStore",
]  # fmt: skip
