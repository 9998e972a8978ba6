"""Object store: where media segments and manifests live.

Stages name objects by key (``hls/<stream>/...``); the store decides where the
bytes go. Embedded default: a local directory. Scale-out: an S3-compatible store.
"""

from tidecast.store.base import InvalidKey, ObjectNotFound, Store
from tidecast.store.local import LocalStore

__all__ = ["InvalidKey", "LocalStore", "ObjectNotFound", "Store"]
