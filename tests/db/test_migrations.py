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
from sqlalchemy import column, create_engine, event, insert, inspect, select, table
from sqlalchemy.engine import Engine

from tidecast.db.leases import Leases
from tidecast.db.migrate import _initial_tables, current, head, upgrade, upgrade_engine
from tidecast.db.models import Base, ChatMessage
from tidecast.db.repo import Database

# the tables of the builds before migrations (``create_all``, no alembic_version)
PRE_MIGRATION_TABLES = ["streams", "broadcasts", "segments", "clips", "chat_messages"]
# the streams table as the initial revision made it (the model has columns added since)
OLD_STREAMS = table("streams", *(column(c) for c in (
    "name", "title", "key_hash", "created_at", "recording", "retention_mode", "retention_value")))  # fmt: skip


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
    assert head() == "0007"


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
                OLD_STREAMS.insert().values(
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


def test_0003_on_a_database_at_0002_keeps_its_recordings(db_url: str) -> None:
    """A database of the build before healing: its broadcasts and segments stay, every
    segment reads as not healed, and ended broadcasts get their gap counts."""
    from alembic import command
    from sqlalchemy import Boolean, Float, Integer, String

    from tidecast.db.migrate import config
    from tidecast.db.recordings import Recordings, SegmentRow

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            command.upgrade(config(conn), "0002")
            conn.commit()
        assert _revision(engine) == "0002"
        # rows written the way the 0002 build wrote them (tables as they were then)
        broadcasts = table("broadcasts", *(column(c) for c in (
            "id", "stream_id", "started_at", "ended_at", "end_reason", "title", "parts", "duration",
            "size", "renditions", "recorded", "vod_ready")))  # fmt: skip
        segments = table("segments", column("broadcast_id", String), column("rendition", String),
                         column("sequence", Integer), column("part", Integer), column("start", Float),
                         column("duration", Float), column("init_key", String),
                         column("segment_key", String), column("size", Integer), column("gap", Boolean),
                         column("codecs", String), column("width", Integer), column("height", Integer),
                         column("frame_rate", Float), column("program_date_time", Float))  # fmt: skip
        t = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
        with engine.begin() as conn:
            conn.execute(OLD_STREAMS.insert().values(name="old", title="", key_hash="h" * 64, created_at=t,
                                               recording=True, retention_mode="forever", retention_value=0))  # fmt: skip
            conn.execute(broadcasts.insert().values(
                id="b1", stream_id=1, started_at=t, ended_at=t, end_reason="ended", title="Show",
                parts=1, duration=6.0, size=2000, renditions="360p", recorded=True, vod_ready=True))  # fmt: skip
            conn.execute(segments.insert(), [
                {"broadcast_id": "b1", "rendition": "360p", "sequence": n, "part": 0, "start": 2.0 * n,
                 "duration": 2.0, "init_key": "i", "segment_key": "" if n == 1 else f"s{n}",
                 "size": 0 if n == 1 else 1000, "gap": n == 1, "codecs": "avc1", "width": 640,
                 "height": 360, "frame_rate": 30.0, "program_date_time": 100.0 + 2 * n}
                for n in range(3)])  # fmt: skip

        db = Database(db_url)  # a server start of the new build: migrates to head
        try:
            assert _revision(engine) == head() and _schema_diff(engine) == []
            rec = Recordings(db)
            info = rec.get("b1")
            assert (info.title, info.duration, info.size, info.renditions) == (
                "Show",
                6.0,
                2000,
                ("360p",),
            )
            assert (info.gaps, info.healed, info.vod_ready) == (1, 0, True)
            rows = rec.segments("b1")
            assert [(r.sequence, r.gap, r.healed, r.segment_key) for r in rows] == [
                (0, False, False, "s0"), (1, True, False, ""), (2, False, False, "s2")]  # fmt: skip
            assert rec.heal_segment("b1", SegmentRow("360p", 1, 0, 2.0, 2.0, "i", "s1", 1000, False,
                                                     "avc1", 640, 360, 30.0, 102.0))  # fmt: skip
            assert (rec.get("b1").gaps, rec.get("b1").healed, rec.get("b1").size) == (0, 1, 3000)
        finally:
            db.close()
    finally:
        engine.dispose()
