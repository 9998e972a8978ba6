"""Real servers for the scale-out tests: an S3 API server and a NATS server of our
own (processes started here), a fresh database on the machine's PostgreSQL, and a
PostgreSQL server of a test's own (for tests that stop it)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.db.conftest import PG_ADMIN_URL, _pg_up, _start_pg

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


class S3Server:
    """An S3 API server (moto's) as its own process, which a test can pause (SIGSTOP: the
    server "stops" without losing what it stores) and resume."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        if not wait_port(self.port, 20, self.proc):
            self.close()
            pytest.fail("the S3 API server did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            self.proc.wait(10)


@contextlib.contextmanager
def s3_process() -> Iterator[S3Server]:
    server = S3Server()
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """An S3 API server (moto's) as its own process; yields its endpoint URL."""
    with s3_process() as server:
        yield server.url


class NatsServer:
    """A nats-server with JetStream on a port and storage directory of its own, so a
    test can stop and restart it without touching the machine's server."""

    def __init__(self, store_dir: Path) -> None:
        if not os.path.exists(NATS_SERVER):
            pytest.fail("nats-server is not installed")
        self.port = free_port()
        self.store_dir = store_dir
        self.log = store_dir.parent / f"nats-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store_dir),
             "-l", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if not wait_port(self.port, 15, self.proc):
            pytest.fail(f"nats-server did not start:\n{self.log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL (started if it is down)."""
    if not _pg_up():
        _start_pg()
        assert _pg_up(), "PostgreSQL did not come up"
    name = "tidecast_e2e_" + secrets.token_hex(4)
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


PG_BIN = Path(max(Path("/usr/lib/postgresql").glob("*/bin"), default=Path("/usr/lib/postgresql/bin"),
                  key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0))  # fmt: skip


class PrivatePostgres:
    """A PostgreSQL server of the test's own (the Debian binaries: initdb, pg_ctl), on a free
    port of 127.0.0.1 with trust auth and its own data directory, so that a test can stop
    and start it without disturbing the machine's server or any other test.

    The server refuses to run as root: it runs as the ``postgres`` system user then, in a
    directory that user owns (under ``base`` when that user can reach it, else a fresh one
    in the system temp dir). ``stop`` is a fast shutdown: clients are disconnected at once.
    """

    def __init__(self, base: Path) -> None:
        for tool in ("initdb", "pg_ctl"):
            if not (PG_BIN / tool).exists():
                pytest.fail(f"PostgreSQL's {tool} is not installed ({PG_BIN})")
        self.as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        base.mkdir(parents=True, exist_ok=True)
        parent = base if self._reachable(base) else None
        self.dir = Path(tempfile.mkdtemp(prefix="tidecast-pg-", dir=parent))
        if self.as_pg:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = free_port()
        self.running = False
        self._run(PG_BIN / "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--locale=C", "--no-sync")  # fmt: skip

    def _reachable(self, path: Path) -> bool:
        if not self.as_pg:
            return True
        return subprocess.run([*self.as_pg, "test", "-w", str(path), "-a", "-x", str(path)],
                              check=False).returncode == 0  # fmt: skip

    def _run(self, *cmd: object, timeout: float = 60) -> None:
        r = subprocess.run([*self.as_pg, *map(str, cmd)], capture_output=True, text=True,
                           timeout=timeout, check=False)  # fmt: skip
        if r.returncode != 0:
            pytest.fail(f"{Path(str(cmd[0])).name} failed ({r.returncode}):\n{r.stdout}{r.stderr}\n"
                        f"{self.server_log()[-2000:]}")  # fmt: skip

    def server_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self) -> None:
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50")  # fmt: skip
        self._run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "30", "-o", opts, "start")
        self.running = True
        if not wait_port(self.port, 15):
            pytest.fail(f"the private PostgreSQL did not listen:\n{self.server_log()[-2000:]}")

    def stop(self, mode: str = "fast") -> None:
        """Shut the server down (``fast``: disconnect clients; ``immediate``: like a crash)."""
        if self.running:
            self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "30", "stop")
            self.running = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database on this server; its URL."""
        name = name or "tidecast_" + secrets.token_hex(4)
        admin = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as c:
                c.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return self.url(name)

    def remove(self) -> None:
        if self.running:
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def private_postgres(base: Path) -> Iterator[PrivatePostgres]:
    """A started ``PrivatePostgres``; stopped and removed afterwards."""
    pg = PrivatePostgres(base)
    try:
        pg.start()
        yield pg
    finally:
        pg.remove()


def drop_nats_namespace(url: str, prefix: str) -> None:
    """Delete the JetStream stream a test's bus prefix made on a shared NATS server."""
    import asyncio

    from tidecast.bus.nats import NatsBus

    async def drop() -> None:
        bus = NatsBus(url, prefix=prefix)
        await bus.start()
        await bus.delete_stream()
        await bus.aclose()

    asyncio.run(drop())
