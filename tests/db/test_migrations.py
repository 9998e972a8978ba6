"""Alembic migrations, on SQLite and PostgreSQL: they build exactly the models' schema,
adopt databases made by create_all before migrations existed, and run once however
many processes start at the same time."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, event, insert, inspect, select
from sqlalchemy.engine import Engine

from tidecast.db.leases import Leases
from tidecast.db.migrate import _initial_tables, current, head, upgrade, upgrade_engine
from tidecast.db.models import Base, ChatMessage, Stream
from tidecast.db.repo import Database

# the tables of the builds before migrations (``create_all``, no alembic_version)
PRE_MIGRATION_TABLES = ["streams", "broadcasts", "segments", "clips", "chat_messages"]


def _schema_diff(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(ctx, Base.metadata))


def _revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return current(conn)


def _create_all_pre_migration(engine: Engine, tables: list[str]) -> None:
    """The tables as ``create_all`` made them before migrations (the initial revision's
    definitions: the models have columns added by later revisions since)."""
    creators = _initial_tables()
    with engine.begin() as conn, Operations.context(MigrationContext.configure(conn)):
        for t in tables:
            creators[t]()


def test_revisions_are_one_chain() -> None:
    assert head() == "0003"


def test_upgraded_database_matches_the_models(db_url: str) -> None:
    assert upgrade(db_url) == head()
    engine = create_engine(db_url)
    try:
        assert _schema_diff(engine) == []
        assert _revision(engine) == head()
    finally:
        engine.dispose()


def test_database_from_before_migrations_is_stamped_upgraded_and_kept(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        _create_all_pre_migration(engine, PRE_MIGRATION_TABLES)
        created = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
        with engine.begin() as conn:
            conn.execute(
                insert(Stream).values(
                    name="old", title="made by create_all", key_hash="h" * 64, created_at=created,
                    recording=True, retention_mode="forever", retention_value=0,
                )
            )  # fmt: skip
        assert "alembic_version" not in inspect(engine).get_table_names()

        db = Database(db_url)  # what a server start does
        try:
            info = db.get_stream("old")
            assert (info.title, info.created_at) == ("made by create_all", created)
            assert Leases(db).acquire("x", "me", 10.0).ours == 1  # 0002 ran
        finally:
            db.close()
        assert _revision(engine) == head()
        assert _schema_diff(engine) == []
    finally:
        engine.dispose()


def test_adopted_database_gets_the_initial_tables_it_lacked(db_url: str) -> None:
    """A database made before chat existed: create_all would have added its table; so do we."""
    engine = create_engine(db_url)
    try:
        _create_all_pre_migration(engine, [t for t in PRE_MIGRATION_TABLES if t != "chat_messages"])
        assert upgrade(db_url) == head()
        assert _schema_diff(engine) == []
        with engine.begin() as conn:
            conn.execute(
                insert(ChatMessage).values(
                    id="m1", stream="s", user="u", role="viewer", text="hi", ts=1.0, deleted=False
                )
            )
            assert conn.scalar(select(ChatMessage.text)) == "hi"
    finally:
        engine.dispose()


def test_upgrading_twice_changes_nothing(db_url: str) -> None:
    assert upgrade(db_url) == head()
    engine = create_engine(db_url)
    statements: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement.strip().split(None, 1)[0].upper())

    try:
        assert upgrade_engine(engine) == head()
        assert upgrade_engine(engine) == head()
        changes = [s for s in statements if s in ("CREATE", "ALTER", "DROP", "INSERT", "UPDATE")]
        assert changes == []
        assert _revision(engine) == head()
    finally:
        engine.dispose()


def test_many_processes_starting_at_once_migrate_once(db_url: str) -> None:
    """Servers started together against one fresh database: all come up, none trips on another."""
    n = 6
    barrier = threading.Barrier(n)
    results: list[str] = []
    errors: list[BaseException] = []

    def start() -> None:
        engine = create_engine(db_url)
        try:
            barrier.wait(timeout=30)
            results.append(upgrade_engine(engine))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert results == [head()] * n
    engine = create_engine(db_url)
    try:
        assert _schema_diff(engine) == []
    finally:
        engine.dispose()
