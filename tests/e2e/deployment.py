"""A scale-out deployment on one host, for the tests: each role its own process
(``tidecast ingest|worker|packager|origin``), one config file, real PostgreSQL,
NATS and S3 servers, and optionally an nginx edge in front of the origins."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.services import free_port
from tidecast.edge.nginx import EdgeConfig, render

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
ADMIN_TOKEN = "adm_test_deployment_token"


@dataclass
class RoleProc:
    role: str
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    http_port: int = 0
    rtmp_port: int = 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Deployment:
    root: Path
    settings: dict[str, object]
    procs: dict[str, RoleProc] = field(default_factory=dict)
    nginx: subprocess.Popen[bytes] | None = None
    edge_port: int = 0

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        lines = [f"{k} = {_toml(v)}" for k, v in {**self.settings, "admin_token": ADMIN_TOKEN}.items()]
        self.config = self.root / "tidecast.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "AWS_ACCESS_KEY_ID": "test",
                    "AWS_SECRET_ACCESS_KEY": "test", "TIDECAST_HOST": "127.0.0.1"}  # fmt: skip

    def start(self, role: str, name: str, *args: str, wait: bool = True,
              env: dict[str, str] | None = None) -> RoleProc:  # fmt: skip
        old = self.procs.get(name)
        http_port = old.http_port if old else free_port()
        rtmp_port = old.rtmp_port if old else free_port()
        data = self.root / name
        data.mkdir(exist_ok=True)
        log = data / "role.log"
        with log.open("ab") as f:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tidecast", role, "--config", str(self.config), "--data-dir", str(data),
                 "--http-port", str(http_port), "--rtmp-port", str(rtmp_port), *args],
                env={**self.env, **(env or {})}, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        rp = RoleProc(role, name, proc, log, http_port, rtmp_port)
        self.procs[name] = rp
        if wait:
            self.wait_started(rp)
        return rp

    def wait_started(self, rp: RoleProc, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        mark = f"tidecast {rp.role}:"
        while time.monotonic() < deadline:
            if not rp.alive():
                pytest.fail(f"{rp.name} exited during start-up:\n{rp.text()[-3000:]}")
            if mark in rp.text():
                return
            time.sleep(0.05)
        pytest.fail(f"{rp.name} did not start:\n{rp.text()[-3000:]}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        rp = self.procs[name]
        if rp.alive():
            os.killpg(rp.proc.pid, sig)  # the role and its worker children
            rp.proc.wait(20)

    def stop(self, name: str) -> None:
        rp = self.procs[name]
        if rp.alive():
            rp.proc.send_signal(signal.SIGTERM)
            try:
                rp.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill(name)

    def origin(self, name: str) -> str:
        return f"http://127.0.0.1:{self.procs[name].http_port}"

    @property
    def edge(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}"

    def start_edge(self, origins: list[str]) -> None:
        if not os.path.exists(NGINX):
            pytest.fail("nginx is not installed: scripts/setup.sh --test installs it")
        self.edge_port = free_port()
        prefix = self.root / "edge"
        (prefix / "cache").mkdir(parents=True, exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(render(EdgeConfig(
            origins=[f"127.0.0.1:{self.procs[o].http_port}" for o in origins],
            listen=f"127.0.0.1:{self.edge_port}", cache_dir=str(prefix / "cache"),
            segment_target=float(self.settings.get("segment_target", 2.0)),  # type: ignore[arg-type]
            pid_file=str(prefix / "nginx.pid"), error_log=str(prefix / "error.log"),
            worker_processes="1", user="root",  # the test's files are root's
        )))  # fmt: skip
        self.nginx = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.edge}/api/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        pytest.fail("the nginx edge did not come up")

    def create_stream(self, name: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "tidecast", "streams", "create", name, "--config", str(self.config),
             "--data-dir", str(self.root / "admin")],
            env=self.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return next(line.split()[2] for line in out.stdout.splitlines() if line.startswith("stream key:"))

    def close(self) -> None:
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.terminate()
            self.nginx.wait(10)
        for name in list(self.procs):
            self.stop(name)

    def logs(self) -> str:
        return "\n".join(f"===== {n}\n{rp.text()[-4000:]}" for n, rp in self.procs.items())


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def active_packager(db_url: str, stream: str) -> int | None:
    """The pid of the packager holding ``stream``'s lease, judged on the database's clock."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as c:
            row = c.execute(text("SELECT holder, expires_at > extract(epoch from clock_timestamp()) "
                                 "FROM leases WHERE name = :n"), {"n": f"packager/{stream}"}).first()  # fmt: skip
    finally:
        engine.dispose()
    if row is None or not row[1]:
        return None
    return int(row[0].split(":")[1])  # host:pid:nonce
