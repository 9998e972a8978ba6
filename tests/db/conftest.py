"""Every repository test runs on SQLite and on the real PostgreSQL server (:5432); tests
that stop the server use one of their own (``private_pg``)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, text

if TYPE_CHECKING:
    from tests.services import PrivatePostgres

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _pg_up() -> bool:
    try:
        with create_engine(PG_ADMIN_URL).connect() as c:
            c.execute(text("select 1"))
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable yet"
        print(f"PostgreSQL not reachable: {exc!r}")
        return False


def _start_pg() -> None:
    """The machine's PostgreSQL, started the way the machine starts it."""
    versions = (
        sorted(p.name for p in Path("/etc/postgresql").glob("*"))
        if Path("/etc/postgresql").exists()
        else []
    )
    if not versions or not shutil.which("pg_ctlcluster"):
        pytest.fail("PostgreSQL is not running on :5432 and is not installed here")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"], check=False
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db.sqlite'}"
        return
    from tests.services import pg_database

    with pg_database() as url:
        yield url


@pytest.fixture
def private_pg(tmp_path: Path) -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of the test's own, which the test may stop and start."""
    from tests.services import private_postgres

    with private_postgres(tmp_path / "pg") as pg:
        yield pg
