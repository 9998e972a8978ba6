"""The whole server on PostgreSQL instead of SQLite: publish, record, VOD, chat history."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest
import websockets.sync.client as ws_client

from tests.conftest import start_server, wait_for
from tests.db.conftest import db_url  # noqa: F401 - the fixture, on both backends
from tidecast import ffmpeg

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_serve_on_postgresql(db_url: str, tmp_path: Path, ffmpeg_exe: str) -> None:  # noqa: F811
    server = start_server(tmp_path / "data", "--reconnect-grace", "0", env={"TIDECAST_DATABASE_URL": db_url})
    try:
        key = server.create_stream("pg")
        assert not (tmp_path / "data" / "tidecast.db").exists()  # nothing went to SQLite
        p = ffmpeg.TestPattern(width=320, height=240, duration=5, clock=False, video_bitrate_k=300)
        pub = subprocess.Popen(ffmpeg.publish_test_pattern_args(p, server.rtmp_url(key), ffmpeg_exe),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wait_for(lambda: httpx.get(f"{server.http}/api/v1/streams/pg").json()["live"], 15, what="live")
        with ws_client.connect(f"ws://127.0.0.1:{server.http_port}/chat/pg") as ws:
            ws.send(json.dumps({"type": "join", "name": "pat"}))
            ws.send(json.dumps({"type": "message", "text": "stored in postgres"}))
            while json.loads(ws.recv(timeout=5))["type"] != "message":
                pass
        assert pub.wait(timeout=30) == 0
        wait_for(lambda: httpx.get(f"{server.http}/api/v1/broadcasts").json()[0]["vod"], 20, what="VOD")
        b = httpx.get(f"{server.http}/api/v1/broadcasts").json()[0]
        assert abs(b["duration"] - 5) <= 2
        chat = httpx.get(f"{server.http}/api/v1/broadcasts/{b['id']}/chat").json()
        assert [m["text"] for m in chat] == ["stored in postgres"]
    finally:
        server.stop()
