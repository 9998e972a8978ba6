"""The whole pipeline on the NATS JetStream bus (the real server on :4222): segments,
transcode jobs shared by the workers, playlists, and chat all cross NATS."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import httpx
import pytest
import websockets.sync.client as ws_client

from tests.bus.test_bus_contract import NATS_URL, ensure_nats
from tests.conftest import start_server, wait_for
from tests.e2e.watch import whole_playlist
from tests.services import drop_nats_namespace
from tidecast import ffmpeg

pytestmark = pytest.mark.e2e


def test_pipeline_and_chat_over_nats(tmp_path: Path, ffmpeg_exe: str) -> None:
    ensure_nats()
    prefix = "e2e" + secrets.token_hex(3)
    env = {"TIDECAST_BUS_URL": NATS_URL, "TIDECAST_BUS_PREFIX": prefix, "TIDECAST_LADDER": "240:300,144:150"}
    server = start_server(tmp_path / "data", "--reconnect-grace", "0", "--playlist-window", "40", env=env)
    try:
        key = server.create_stream("nb")
        p = ffmpeg.TestPattern(width=426, height=240, duration=10, clock=False, video_bitrate_k=400)
        pub = subprocess.Popen(ffmpeg.publish_test_pattern_args(p, server.rtmp_url(key), ffmpeg_exe),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wait_for(lambda: httpx.get(f"{server.http}/api/v1/streams/nb").json()["live"], 15, what="live")
        with ws_client.connect(f"ws://127.0.0.1:{server.http_port}/chat/nb") as ws:
            ws.send(json.dumps({"type": "join", "name": "natty"}))
            ws.send(json.dumps({"type": "message", "text": "over nats"}))
            while (ev := json.loads(ws.recv(timeout=5)))["type"] != "message":
                pass
            assert ev["text"] == "over nats"
        assert pub.wait(timeout=40) == 0
        wait_for(lambda: httpx.get(f"{server.http}/api/v1/broadcasts").json()[0]["vod"], 30, what="VOD")
        # a 240p source stands in for the 240p rung (passthrough); 144p is encoded
        for rendition in ("source", "144p", "audio"):
            pl = whole_playlist(httpx.get(f"{server.http}/hls/nb/{rendition}.m3u8").text)
            seqs = [int(s.uri.rsplit("/", 1)[1].split(".")[0]) for s in pl.segments]
            assert pl.is_endlist and seqs == list(range(len(seqs))) and len(seqs) >= 4, (rendition, seqs)
        assert "bus on NATS" in server.log()
    finally:
        server.stop()
        drop_nats_namespace(NATS_URL, prefix)
