"""Schema migrations: every start brings the database up to the newest Alembic revision.

``create_all`` only ever creates missing tables, so a column added to a model
never reached an existing database; Alembic revisions (in ``migrations/``, shipped
with the package) do. The Alembic configuration is built here in code, so no
``alembic.ini`` is needed at run time.

Databases made by builds from before migrations (``create_all``, no
``alembic_version`` table) are adopted: whatever initial tables they lack are
created, as ``create_all`` would have done, then they are stamped at the initial
revision and upgraded from there.

Several processes may start at once against one PostgreSQL database; each
upgrade runs in one transaction under an advisory lock, so the first one
migrates and the others then find nothing left to do. On SQLite the same is
had with ``BEGIN IMMEDIATE`` (the database's write lock).

Without a server: ``python -m tidecast.db.migrations URL``. A new revision, from
a database at head and changed models: ``alembic.command.revision(config(conn),
message, autogenerate=True, rev_id="0003")``, then read it over and tidy it up.
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Callable

from alembic import command
from alembic.config import Config
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger("tidecast.db.migrate")

SCRIPT_LOCATION = "tidecast.db:migrations"
INITIAL = "0001"  # the schema as the builds before migrations made it
VERSION_TABLE = "alembic_version"
# any constant shared by every tidecast process; this one spells "tidecast" in ASCII
PG_LOCK_KEY = 0x7469646563617374


def config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations (and at ``connection``, if given)."""
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def _script() -> ScriptDirectory:
    """The packaged revisions (read once: they do not change while the process runs)."""
    return ScriptDirectory.from_config(config())


def head() -> str:
    rev = _script().get_current_head()
    assert rev is not None, "the packaged migrations have no head revision"
    return rev


def current(connection: Connection) -> str | None:
    """The revision the database is at (None: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade_engine(engine: Engine) -> str:
    """Upgrade to the newest revision; returns it. Safe to run from many processes at once."""
    target = head()
    with engine.connect() as conn:
        _lock(conn)
        tables = set(inspect(conn).get_table_names())
        if VERSION_TABLE not in tables and tables & set(_initial_tables()):
            _adopt(conn, tables)
            tables.add(VERSION_TABLE)
        before = _stamped(conn) if VERSION_TABLE in tables else None
        if before != target:  # an up-to-date start stays quiet: no Alembic context at all
            command.upgrade(config(conn), "head")
        conn.commit()
    if before != target:
        log.info("database schema upgraded from %s to %s", before or "nothing", target)
    return target


def upgrade(url: str) -> str:
    """Upgrade the database at ``url`` to the newest revision (for the CLI and deploy scripts)."""
    engine = create_engine(url)
    try:
        return upgrade_engine(engine)
    finally:
        engine.dispose()


def _lock(conn: Connection) -> None:
    """Serialise upgrades; held until the upgrade's transaction ends."""
    if conn.dialect.name == "postgresql":
        # a second process waits for the first one's upgrade however long it takes (the
        # session's usual lock and statement limits are for the pipeline's short calls)
        conn.execute(text("SET LOCAL lock_timeout = 0"))
        conn.execute(text("SET LOCAL statement_timeout = 0"))
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        # pysqlite opens no transaction for DDL by itself: take the write lock now,
        # so the whole upgrade is one transaction that a second process waits for
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _stamped(conn: Connection) -> str | None:
    """The version table's revision, read without an Alembic context (those log at INFO)."""
    return conn.scalar(text(f"SELECT version_num FROM {VERSION_TABLE}"))


def _initial_tables() -> dict[str, Callable[[], None]]:
    """The initial revision's table creators by table name, in foreign-key order."""
    module = _script().get_revision(INITIAL).module
    tables: dict[str, Callable[[], None]] = module.TABLES
    return tables


def _adopt(conn: Connection, existing: set[str]) -> None:
    """Bring a database made by ``create_all`` under Alembic: complete it, stamp it initial."""
    missing = {name: create for name, create in _initial_tables().items() if name not in existing}
    log.info(
        "database made before migrations: stamping it at %s%s",
        INITIAL,
        f" after creating {', '.join(missing)}" if missing else "",
    )
    if missing:
        ctx = MigrationContext.configure(
            conn, opts={"render_as_batch": conn.dialect.name == "sqlite"}
        )
        with Operations.context(ctx):
            for create in missing.values():
                create()
    command.stamp(config(conn), INITIAL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tidecast.db.migrations",
        description="Upgrade a tidecast database to the newest schema (tidecast serve does it too).",
    )
    parser.add_argument("url", help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/tidecast")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"database at revision {upgrade(args.url)}")
