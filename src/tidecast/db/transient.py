"""Transient database errors: which ones are worth retrying, and the retrying call.

A database that restarts, fails over, drops a connection or refuses one for a
moment must not freeze a stream: the caller retries (``tidecast.retry``) with
backoff until its own deadline. Transient are: a lost or refused connection
(SQLAlchemy ``OperationalError`` / ``InterfaceError`` from a server, or any
``DBAPIError`` that invalidated its connection), a server shutting down, a
serialization failure or a deadlock (PostgreSQL class 40), a row lock not granted
in time (55P03), a session ended for idling in a transaction (25P03), a pool that had
no connection to give, and SQLite's busy or locked database. Not transient: bad
SQL, a constraint, a missing table, and every domain error (``StaleEpoch``,
``BroadcastNotFound``, ...), which are raised at once.

``call(op, fn, *args, deadline=...)`` runs a synchronous repository call in a
thread and retries it; each attempt has its own time limit too, since a thread
blocked on a dead socket would otherwise hold the caller forever (the abandoned
attempt finishes, or fails, on its own; the repository's writes are idempotent).
Counted: ``tidecast_db_retries_total{op}`` (attempts that failed and were
retried) and ``tidecast_db_failures_total{op}`` (calls that raised a database
error in the end).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc

from tidecast.metrics import REGISTRY, Counter, Registry
from tidecast.retry import Backoff, retry

T = TypeVar("T")

log = logging.getLogger("tidecast.db")

# SQLite's own words for "someone else holds the lock" and for a file it cannot open yet
_SQLITE_TRANSIENT = ("database is locked", "database table is locked", "busy",
                     "unable to open database file", "disk i/o error")  # fmt: skip
# PostgreSQL SQLSTATE classes: 08 connection exception, 40 transaction rollback
# (serialization failure, deadlock), 53 insufficient resources, 57 operator
# intervention (admin shutdown, cannot connect now), 58 system error
_PG_TRANSIENT_CLASSES = ("08", "40", "53", "57", "58")
# and two codes of other classes: a row lock not granted within ``lock_timeout``, and a
# session the server ended for stalling inside a transaction
_PG_TRANSIENT_CODES = ("55P03", "25P03")

# Server-side bounds on every PostgreSQL session (libpq ``options``). A client that stalls
# inside a transaction (a paused or starved process) loses it after IDLE_IN_TRANSACTION
# seconds and its row locks with it: a fenced write's share lock on a lease row must not
# keep a stand-by from taking the lease over. A statement waits at most LOCK_TIMEOUT for a
# row lock (then a transient error, retried), and runs at most STATEMENT_TIMEOUT, so no
# thread stays blocked on the server for longer than that.
IDLE_IN_TRANSACTION = 3.0  # s; at most the default lease time to live
LOCK_TIMEOUT = 2.0  # s
STATEMENT_TIMEOUT = 30.0  # s

DEFAULT_BACKOFF = Backoff(initial=0.05, maximum=1.0)
ATTEMPT_TIMEOUT = 15.0  # one attempt never holds its caller longer than this


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same call later can succeed."""
    if isinstance(exc, sa_exc.TimeoutError):  # the pool had no connection in time
        return True
    if isinstance(exc, TimeoutError):  # an attempt past its own time limit
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        if isinstance(orig, sqlite3.Error):
            return _sqlite_transient(orig)
        code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if isinstance(code, str) and code:
            return code[:2] in _PG_TRANSIENT_CLASSES or code in _PG_TRANSIENT_CODES
        # no SQLSTATE: a client-side failure (refused, reset, closed, timed out)
        return isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    if isinstance(exc, sqlite3.Error):
        return _sqlite_transient(exc)
    return _raw_driver_transient(exc)


def _sqlite_transient(exc: sqlite3.Error) -> bool:
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    text = str(exc).lower()
    return any(t in text for t in _SQLITE_TRANSIENT)


def _raw_driver_transient(exc: BaseException) -> bool:
    """A driver error that reached us unwrapped (e.g. raised while connecting)."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    if isinstance(exc, psycopg.OperationalError):
        code = getattr(exc, "sqlstate", None)
        return not code or code[:2] in _PG_TRANSIENT_CLASSES
    return False


class _Metrics:
    def __init__(self, registry: Registry) -> None:
        self.retries: Counter = registry.counter(
            "tidecast_db_retries_total", "Database calls that failed transiently and were retried.",
            ("op",))  # fmt: skip
        self.failures: Counter = registry.counter(
            "tidecast_db_failures_total",
            "Database calls that failed for good (a non-transient error, or transient past the deadline).",
            ("op",))  # fmt: skip


@functools.cache
def _metrics(registry: Registry) -> _Metrics:
    return _Metrics(registry)


async def call(
    op: str, fn: Callable[..., T], *args: Any, deadline: float,
    attempt_timeout: float = ATTEMPT_TIMEOUT, backoff: Backoff | None = None,
    registry: Registry = REGISTRY, logger: logging.Logger | None = None, **kwargs: Any,
) -> T:  # fmt: skip
    """``fn(*args, **kwargs)`` in a thread, retried on transient errors until ``deadline`` s.

    ``op`` names the call in logs and metrics (keep it a small fixed set, e.g.
    ``"record_segment"``). Raises the last error once the deadline has passed, or
    at once for an error that is not transient.
    """
    m = _metrics(registry)
    limit = min(attempt_timeout, deadline) if deadline > 0 else attempt_timeout

    async def attempt() -> T:
        return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), timeout=limit)

    try:
        return await retry(attempt, transient=is_transient, what=f"database {op}", deadline=deadline,
                           backoff=backoff or DEFAULT_BACKOFF, logger=logger or log,
                           on_retry=lambda _exc: m.retries.inc(op=op))  # fmt: skip
    except (sa_exc.SQLAlchemyError, sqlite3.Error, TimeoutError):
        m.failures.inc(op=op)
        raise
    except Exception as exc:
        if _raw_driver_transient(exc):
            m.failures.inc(op=op)
        raise


def engine_options(url: str) -> dict[str, Any]:
    """``create_engine`` settings that fail fast on a dead server and recover once it is back."""
    if url.startswith("sqlite"):
        return {}
    opts: dict[str, Any] = {
        "pool_pre_ping": True,  # a connection the server dropped is found and replaced on checkout
        "pool_recycle": 1800,  # seconds; outlives no proxy's or server's idle timeout
        "pool_timeout": 10,  # seconds to wait for a free pooled connection
    }
    if "+psycopg" in url or url.startswith("postgresql://"):
        # libpq: give up connecting after this many seconds (its minimum is 2), and
        # notice a dead peer on an idle connection within about half a minute
        opts["connect_args"] = {"connect_timeout": 3, "keepalives": 1, "keepalives_idle": 10,
                                "keepalives_interval": 5, "keepalives_count": 3,
                                "options": session_options()}  # fmt: skip
    return opts


def session_options(idle_in_transaction: float = IDLE_IN_TRANSACTION) -> str:
    """libpq ``options`` bounding every session on the server (see ``IDLE_IN_TRANSACTION``)."""
    ms = {"idle_in_transaction_session_timeout": idle_in_transaction,
          "lock_timeout": LOCK_TIMEOUT, "statement_timeout": STATEMENT_TIMEOUT}  # fmt: skip
    return " ".join(f"-c {k}={round(v * 1000)}" for k, v in ms.items())
