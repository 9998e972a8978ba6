"""Shared test fixtures: ffmpeg, free ports, and a real tidecast server process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tidecast import ffmpeg


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Heavy end-to-end tests last (stable otherwise): scripts/test.sh runs the unit and
    integration tests beside the end-to-end ones, and those finish before these start."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is not None)


@pytest.fixture(scope="session")
def ffmpeg_exe() -> str:
    return ffmpeg.ffmpeg_exe()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TidecastServer:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    http_port: int
    rtmp_port: int
    log_path: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def rtmp_url(self, key: str) -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/live/{key}"

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    @property
    def admin(self) -> dict[str, str]:
        """Headers for admin and operator endpoints (/metrics, /api/v1/transcode)."""
        return {"authorization": f"Bearer {self.admin_token}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def create_stream(self, name: str) -> str:
        r = httpx.post(
            f"{self.http}/api/v1/streams", json={"name": name},
            headers={"authorization": f"Bearer {self.admin_token}"}, timeout=10,
        )  # fmt: skip
        r.raise_for_status()
        return str(r.json()["stream_key"])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> TidecastServer:
    http_port, rtmp_port = free_port(), free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "server.log"
    full_env = {
        **os.environ,
        "TIDECAST_HOST": "127.0.0.1",
        "TIDECAST_HTTP_PORT": str(http_port),
        "TIDECAST_RTMP_PORT": str(rtmp_port),
        "TIDECAST_DATA_DIR": str(data_dir),
        "PYTHONUNBUFFERED": "1",
        "TIDECAST_LADDER": "none",  # passthrough unless a test asks for the ladder
        # crowds of clients in tests come from one loopback address: the per-address caps
        # are tested where a test sets them (tests/e2e/test_hostile.py)
        "TIDECAST_HTTP_MAX_PER_IP": "8192",
        "TIDECAST_CHAT_MAX_PER_IP": "100000",
        **(env or {}),
    }
    with log_path.open("wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tidecast", "serve", *extra],
            env=full_env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = TidecastServer(proc, data_dir, http_port, rtmp_port, log_path)
    deadline = time.monotonic() + 30
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tidecast exited during start-up:\n{server.log()}")
        try:
            r = httpx.get(f"{server.http}/api/v1/health", timeout=1)
        except httpx.TransportError as exc:
            last_error = exc  # not listening yet
        else:
            if r.status_code == 200:
                return server
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"tidecast did not come up ({last_error}):\n{server.log()}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TidecastServer]:
    s = start_server(tmp_path / "data", "--reconnect-grace", "2")
    yield s
    s.stop()


def wait_for(predicate: object, timeout: float, interval: float = 0.1, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
