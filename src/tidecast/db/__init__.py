"""Metadata: streams, their keys, and broadcasts (SQLAlchemy; SQLite embedded, PostgreSQL later)."""

from tidecast.db.models import Base, Broadcast, Stream
from tidecast.db.repo import Database, NameTaken, StreamNotFound

__all__ = ["Base", "Broadcast", "Database", "NameTaken", "Stream", "StreamNotFound"]
