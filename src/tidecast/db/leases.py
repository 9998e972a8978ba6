"""Leases: named, expiring claims held by one process at a time, with a fencing epoch.

Used for "exactly one packager per stream". Every change is one statement, so
the database decides races: taking a lease is a single
``INSERT ... ON CONFLICT DO UPDATE ... WHERE <free, expired or ours> RETURNING``,
which PostgreSQL and SQLite (>= 3.35) both run atomically. Two processes asking
at the same moment cannot both get it: the second one's conflict check sees the
first one's row and its WHERE fails, so nothing is returned.

Times are wall-clock epoch seconds (``time.time()``), since holders on different
machines compare them; holders should keep a margin for clock skew (renew well
before ``ttl`` runs out, stop well before it would). Calls are synchronous: async
code uses ``asyncio.to_thread``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import case, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from tidecast.db.models import Lease
from tidecast.db.repo import Database


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

    def acquire(self, name: str, holder: str, ttl: float, now: float | None = None) -> int | None:
        """Take (or keep) the lease: its epoch, or None while someone else holds it.

        Free, expired or already ours: it becomes ours until ``now + ttl``. The
        epoch goes up by one whenever the holder changes and stays the same when
        the same holder takes it again (a renewal, even after it lapsed unclaimed).
        """
        now = time.time() if now is None else now
        ins = self._insert(Lease).values(name=name, holder=holder, epoch=1, expires_at=now + ttl)
        stmt = ins.on_conflict_do_update(
            index_elements=[Lease.name],
            set_={
                "holder": ins.excluded.holder,
                "epoch": case(
                    (Lease.holder == ins.excluded.holder, Lease.epoch), else_=Lease.epoch + 1
                ),
                "expires_at": ins.excluded.expires_at,
            },
            where=or_(Lease.expires_at < now, Lease.holder == ins.excluded.holder),
        ).returning(Lease.epoch)
        with self.db.engine.begin() as conn:
            epoch: int | None = conn.execute(stmt).scalar_one_or_none()
        return epoch

    def renew(
        self, name: str, holder: str, epoch: int, ttl: float, now: float | None = None
    ) -> bool:
        """Extend a lease we still hold (same holder and epoch, not expired); False if lost."""
        now = time.time() if now is None else now
        stmt = (
            update(Lease)
            .where(
                Lease.name == name,
                Lease.holder == holder,
                Lease.epoch == epoch,
                Lease.expires_at >= now,
            )
            .values(expires_at=now + ttl)
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
        """(holder, epoch, expires_at) as stored, expired or not; None if never taken."""
        with self.db.engine.connect() as conn:
            row = conn.execute(
                select(Lease.holder, Lease.epoch, Lease.expires_at).where(Lease.name == name)
            ).first()
        return (row[0], row[1], row[2]) if row is not None else None
