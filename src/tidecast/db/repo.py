"""Database: the few queries tidecast makes, behind one small class.

Calls are synchronous (SQLite is local and fast); async code calls them via
``tidecast.db.transient.call`` (a thread, and retries of transient errors). The
engine fails fast on a dead server and recovers once it is back
(``transient.engine_options``). Names are validated here so every entry point (CLI, API)
refuses the same bad input with the same message.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tidecast.db.migrate import upgrade_engine
from tidecast.db.models import Stream
from tidecast.db.transient import engine_options

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class InvalidName(ValueError):
    pass


class NameTaken(ValueError):
    pass


class StreamNotFound(LookupError):
    pass


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_stream_key() -> str:
    return "sk_" + secrets.token_urlsafe(24)


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise InvalidName(
            f"invalid stream name {name!r}: use 1-63 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class StreamInfo:
    id: int
    name: str
    title: str
    created_at: datetime
    ingest_allow: str = ""  # CIDRs, space-separated (ingest/access.py)
    ingest_deny: str = ""
    latency: str = ""  # "" (the node's default), "low" or "standard"
    encryption: str = "none"


@dataclass(frozen=True, slots=True)
class NewStream:
    stream: StreamInfo
    key: str  # shown once; only its hash is kept


def _info(s: Stream) -> StreamInfo:
    return StreamInfo(s.id, s.name, s.title, s.created_at, s.ingest_allow or "", s.ingest_deny or "",
                      s.latency or "", s.encryption or "none")  # fmt: skip


class Database:
    def __init__(self, url: str) -> None:
        self.engine: Engine = create_engine(url, **engine_options(url))
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        # migrations, not create_all: existing databases get new columns too
        upgrade_engine(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._session()

    def create_stream(self, name: str, title: str = "") -> NewStream:
        check_name(name)
        key = new_stream_key()
        with self.session() as s:
            row = Stream(name=name, title=title, key_hash=hash_key(key), created_at=_now())
            s.add(row)
            try:
                s.commit()
            except IntegrityError:
                raise NameTaken(f"a stream named {name!r} already exists") from None
            return NewStream(_info(row), key)

    def rotate_key(self, name: str) -> str:
        key = new_stream_key()
        with self.session() as s:
            row = s.scalar(select(Stream).where(Stream.name == name))
            if row is None:
                raise StreamNotFound(name)
            row.key_hash = hash_key(key)
            s.commit()
        return key

    def list_streams(self) -> list[StreamInfo]:
        with self.session() as s:
            return [_info(r) for r in s.scalars(select(Stream).order_by(Stream.name))]

    def get_stream(self, name: str) -> StreamInfo:
        with self.session() as s:
            row = s.scalar(select(Stream).where(Stream.name == name))
            if row is None:
                raise StreamNotFound(name)
            return _info(row)

    def set_ingest_access(self, name: str, allow: str, deny: str) -> StreamInfo:
        """A stream's own CIDR lists (already validated by the caller)."""
        with self.session() as s:
            row = s.scalar(select(Stream).where(Stream.name == name))
            if row is None:
                raise StreamNotFound(name)
            row.ingest_allow, row.ingest_deny = allow, deny
            s.commit()
            return _info(row)

    def stream_for_key(self, key: str) -> StreamInfo | None:
        with self.session() as s:
            row = s.scalar(select(Stream).where(Stream.key_hash == hash_key(key)))
            return _info(row) if row else None

    def close(self) -> None:
        self.engine.dispose()


def _now() -> datetime:
    return datetime.now(UTC)


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()
