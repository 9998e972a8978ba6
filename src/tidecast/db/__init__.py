"""Metadata: streams, their keys, broadcasts, segments, chat, leases (SQLAlchemy;
SQLite embedded, PostgreSQL scaled out; Alembic migrations)."""

import logging as _logging

# alembic narrates every start at INFO, some of it at import: quiet it before that;
# what a migration changed is logged by tidecast.db.migrate
_logging.getLogger("alembic").setLevel(_logging.WARNING)

from tidecast.db.leases import Fence, Grant, StaleEpoch  # noqa: E402
from tidecast.db.models import Base, Broadcast, Stream  # noqa: E402
from tidecast.db.recordings import BroadcastLive, BroadcastNotFound  # noqa: E402
from tidecast.db.repo import Database, NameTaken, StreamNotFound  # noqa: E402
from tidecast.db.transient import is_transient  # noqa: E402

__all__ = ["Base", "Broadcast", "BroadcastLive", "BroadcastNotFound", "Database", "Fence", "Grant",
           "NameTaken", "StaleEpoch", "Stream", "StreamNotFound", "is_transient"]  # fmt: skip
