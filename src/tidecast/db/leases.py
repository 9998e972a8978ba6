"""Leases: named, expiring claims held by one process at a time, with a fencing epoch.

Used for "exactly one packager per stream". Expiry is judged on one clock, the
database's (PostgreSQL ``clock_timestamp()``, SQLite ``julianday('now')``), never
on a host's wall clock: ``expires_at`` is database-clock epoch seconds, and
every comparison with it is made inside the statement that acts on it.

Taking a lease is decided by a single
``INSERT ... ON CONFLICT DO UPDATE ... WHERE <free, expired or ours> RETURNING``,
which PostgreSQL and SQLite (>= 3.35) both run atomically: two processes asking
at the same moment cannot both get it. Before it, a plain read tells a caller
that a live lease is someone else's (and for how long, in seconds from now on
the database clock), so a stand-by asking about a held lease writes nothing.
Renewal is one conditional ``UPDATE``.

Fencing: a holder stamps its writes with a ``Fence`` (lease name, holder,
epoch). ``check_fence`` runs inside the write's own transaction and raises
``StaleEpoch`` unless the lease row still has that holder and epoch; on
PostgreSQL it reads the row ``FOR SHARE``, so a takeover's ``UPDATE`` of the
lease waits until the fenced transaction has ended, and a write checked before
the takeover commits before the takeover does. A holder that stalls inside such a
transaction (paused, starved) does not hold the takeover up for long: the server ends
a session idle in a transaction after ``transient.IDLE_IN_TRANSACTION`` seconds, and
its write, not committed, writes nothing (the holder's retry is refused). SQLite runs one writer at a
time: ``begin_write`` takes its write lock first (``BEGIN IMMEDIATE``).

Calls are synchronous: async code uses ``tidecast.db.transient.call``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Float, case, cast, func, literal_column, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from tidecast.db.models import Lease
from tidecast.db.repo import Database


class StaleEpoch(Exception):
    """A fenced write refused: the lease has a newer epoch (or another holder) now."""

    def __init__(self, fence: Fence, current: tuple[str, int] | None) -> None:
        now = f"held by {current[0]} at epoch {current[1]}" if current else "not held"
        super().__init__(f"{fence.name}: write of {fence.holder} at epoch {fence.epoch} refused; "
                         f"the lease is {now}")  # fmt: skip
        self.fence = fence
        self.current = current


@dataclass(frozen=True, slots=True)
class Fence:
    """What a fenced write carries: the lease it was made under, as its holder saw it."""

    name: str
    holder: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Grant:
    """The answer to ``acquire``: granted (our epoch) or refused (the holder's)."""

    granted: bool
    holder: str
    epoch: int
    expires_in: float  # seconds from now, on the database clock, until the lease expires

    @property
    def ours(self) -> int | None:
        """Our epoch if granted, else None."""
        return self.epoch if self.granted else None


def db_now(dialect: str) -> ColumnElement[float]:
    """The database's current time, epoch seconds (evaluated when the statement runs)."""
    if dialect == "postgresql":
        return cast(func.extract("epoch", func.clock_timestamp()), Float)
    if dialect == "sqlite":
        return literal_column("((julianday('now') - 2440587.5) * 86400.0)", Float)
    raise NotImplementedError(f"no database clock for {dialect}")


def begin_write(s: Session) -> None:
    """Start the session's transaction holding the write lock on SQLite (PostgreSQL locks rows)."""
    conn = s.connection()
    if conn.dialect.name == "sqlite" and not getattr(
        conn.connection.dbapi_connection, "in_transaction", True
    ):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def check_fence(s: Session | Connection, fence: Fence) -> None:
    """Inside a write's transaction: raise ``StaleEpoch`` unless ``fence`` is still current.

    On PostgreSQL the lease row stays share-locked until the transaction ends; on
    SQLite the caller has taken the write lock (``begin_write``) before.
    """
    q = select(Lease.holder, Lease.epoch).where(Lease.name == fence.name)
    if _dialect(s) == "postgresql":
        q = q.with_for_update(read=True)
    row = s.execute(q).first()
    if row is None or (row[0], row[1]) != (fence.holder, fence.epoch):
        raise StaleEpoch(fence, (row[0], row[1]) if row is not None else None)


def _dialect(s: Session | Connection) -> str:
    bind = s.get_bind() if isinstance(s, Session) else s
    return bind.dialect.name


class Leases:
    def __init__(self, db: Database) -> None:
        self.db = db
        dialect = db.engine.dialect.name
        self._insert: Callable[[type[Lease]], postgresql.Insert | sqlite.Insert]
        if dialect == "postgresql":
            self._insert = postgresql.insert
        elif dialect == "sqlite":
            self._insert = sqlite.insert
        else:  # needs an atomic upsert with a condition; add the dialect's insert here
            raise NotImplementedError(f"leases are not implemented for {dialect}")
        self._now = db_now(dialect)

    def acquire(self, name: str, holder: str, ttl: float) -> Grant:
        """Take (or keep) the lease for ``ttl`` seconds, or learn who holds it and until when.

        Free, expired or already ours: it becomes ours until the database's now +
        ``ttl``. The epoch goes up by one whenever the holder changes and stays
        the same when the same holder takes it again (a renewal, even after it
        lapsed unclaimed). A live lease of someone else's is only read: refused
        with its holder, epoch and seconds left.
        """
        if not ttl > 0:
            raise ValueError(f"a lease needs a positive time to live, not {ttl}")
        with self.db.engine.begin() as conn:
            seen = self._state(conn, name)
            if seen is not None and seen.holder != holder and seen.expires_in > 0:
                return seen
            ins = self._insert(Lease).values(
                name=name, holder=holder, epoch=1, expires_at=self._now + ttl
            )
            stmt = ins.on_conflict_do_update(
                index_elements=[Lease.name],
                set_={
                    "holder": ins.excluded.holder,
                    "epoch": case(
                        (Lease.holder == ins.excluded.holder, Lease.epoch), else_=Lease.epoch + 1
                    ),
                    "expires_at": ins.excluded.expires_at,
                },
                where=or_(Lease.expires_at < self._now, Lease.holder == ins.excluded.holder),
            ).returning(Lease.epoch)
            epoch: int | None = conn.execute(stmt).scalar_one_or_none()
            if epoch is not None:
                return Grant(True, holder, epoch, ttl)
            lost = self._state(conn, name)  # another took it between our read and our write
        assert lost is not None, f"lease {name}: upsert refused, yet no row"
        return lost

    def renew(self, name: str, holder: str, epoch: int, ttl: float) -> bool:
        """Extend a lease we still hold (same holder and epoch, not expired); False if lost."""
        stmt = (
            update(Lease)
            .where(
                Lease.name == name,
                Lease.holder == holder,
                Lease.epoch == epoch,
                Lease.expires_at >= self._now,
            )
            .values(expires_at=self._now + ttl)
        )
        with self.db.engine.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def release(self, name: str, holder: str) -> None:
        """Give the lease up (if ours) so another holder can take it at once, not after ttl."""
        stmt = (
            update(Lease).where(Lease.name == name, Lease.holder == holder).values(expires_at=0.0)
        )
        with self.db.engine.begin() as conn:
            conn.execute(stmt)

    def holder(self, name: str) -> tuple[str, int, float] | None:
        """(holder, epoch, seconds until it expires on the database clock; negative once
        expired); None if never taken."""
        with self.db.engine.connect() as conn:
            g = self._state(conn, name)
        return (g.holder, g.epoch, g.expires_in) if g is not None else None

    def _state(self, conn: Connection, name: str) -> Grant | None:
        row = conn.execute(
            select(Lease.holder, Lease.epoch, Lease.expires_at - self._now).where(
                Lease.name == name
            )
        ).first()
        return Grant(False, row[0], row[1], float(row[2])) if row is not None else None
