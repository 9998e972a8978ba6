"""The nginx edge from ``tidecast edge-config`` with TLS: a self-signed certificate made by the
test (openssl CLI), HTTP/2 over TLS on a high port (curl --http2), HLS objects cached behind
it, chat WebSockets through it over TLS, and X-Forwarded-For set by the edge and believed by
the origin because the edge is a trusted proxy: two chat sockets from one client address
(whatever X-Forwarded-For it sends itself) meet the per-address cap, another address does not.
Real nginx, a real ``OriginNode`` over a local store and the in-process bus."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import websockets
from tests.conftest import free_port
from tests.edge.test_edge_ll import NGINX, stop_nginx

from tidecast.bus.memory import MemoryBus
from tidecast.config import Settings
from tidecast.edge.nginx import EdgeConfig, render
from tidecast.roles import OriginNode, Shared, open_database, open_media

pytestmark = pytest.mark.e2e


@dataclass
class TLSEdge:
    origin: OriginNode
    plain: str
    tls_port: int
    media: Path


def make_cert(where: Path) -> tuple[Path, Path]:
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)  # fmt: skip
    return cert, key


def start_tls_nginx(prefix: Path, origin_port: int) -> tuple[subprocess.Popen[bytes], int, int]:
    """nginx with the generated edge config, TLS on, a self-signed certificate;
    (process, plain port, TLS port)."""
    (prefix / "cache").mkdir(parents=True)
    cert, key = make_cert(prefix)
    port, tls_port = free_port(), free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(render(EdgeConfig(
        origins=[f"127.0.0.1:{origin_port}"], listen=f"127.0.0.1:{port}", cache_dir=str(prefix / "cache"),
        pid_file=str(prefix / "nginx.pid"), error_log=str(prefix / "error.log"), worker_processes="1",
        user="root", tls_cert=str(cert), tls_key=str(key), tls_listen=f"127.0.0.1:{tls_port}",
    )))  # fmt: skip
    check = subprocess.run([NGINX, "-t", "-c", str(conf), "-p", str(prefix)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return proc, port, tls_port


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[TLSEdge]:
    tmp = tmp_path
    settings = Settings(host="127.0.0.1", http_port=0, rtmp_port=0, data_dir=tmp / "data",
                        trusted_proxies="127.0.0.1", chat_max_per_ip=1)  # fmt: skip
    bus = MemoryBus()
    node = OriginNode(settings, Shared(bus, open_database(settings), open_media(settings)))
    node.db.create_stream("room")
    await node.start()
    await node.listen()
    nginx, port, tls_port = await asyncio.to_thread(start_tls_nginx, tmp / "edge", node.http_port)
    try:
        deadline = time.monotonic() + 10
        async with httpx.AsyncClient(timeout=2) as c:
            while True:
                try:
                    if (await c.get(f"http://127.0.0.1:{port}/api/v1/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        pytest.fail("the nginx edge did not come up")
                    await asyncio.sleep(0.1)
        yield TLSEdge(node, f"http://127.0.0.1:{port}", tls_port, settings.media_dir)
    finally:
        await asyncio.to_thread(stop_nginx, nginx)
        await node.aclose()
        node.db.close()


async def curl(*args: str) -> subprocess.CompletedProcess[str]:
    """curl in a thread: the origin answers on this event loop."""
    return await asyncio.to_thread(subprocess.run, ["curl", "-sk", "--max-time", "10", *args],
                                   capture_output=True, text=True, timeout=20)  # fmt: skip


async def test_tls_with_http2_and_cached_objects(edge: TLSEdge) -> None:
    seg = edge.media / "hls" / "room" / "b1" / "source" / "000001.m4s"
    seg.parent.mkdir(parents=True)
    seg.write_bytes(b"x" * 5000)
    base = f"https://127.0.0.1:{edge.tls_port}"
    out = await curl("--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", f"{base}/api/v1/health")
    assert out.stdout == "2 200", out
    url = f"{base}/hls/room/b1/source/000001.m4s"
    first = (await curl("--http2", "-D", "-", "-o", "/dev/null", url)).stdout.lower()
    second = (await curl("--http2", "-D", "-", "-o", "/dev/null", url)).stdout.lower()
    assert first.startswith("http/2 200") and "x-cache-status: miss" in first
    assert second.startswith("http/2 200") and "x-cache-status: hit" in second
    # the plain listener stays; TLS is not offered in clear
    assert (await curl("-o", "/dev/null", "-w", "%{http_code}", f"{edge.plain}/api/v1/health")).stdout == "200"


async def test_chat_over_tls_keys_on_the_address_the_edge_forwards(edge: TLSEdge) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    url = f"wss://127.0.0.1:{edge.tls_port}/chat/room"

    async def open_from(source: str, spoof: str) -> websockets.ClientConnection:
        return await websockets.connect(url, ssl=ctx, local_addr=(source, 0), open_timeout=5,
                                        additional_headers={"X-Forwarded-For": spoof})  # fmt: skip

    async def first_event(ws: websockets.ClientConnection) -> dict[str, object]:
        await ws.send(json.dumps({"type": "join", "name": f"u{id(ws)}"}))
        return dict(json.loads(await asyncio.wait_for(ws.recv(), 5)))

    a = await open_from("127.0.0.2", "198.51.100.1")
    assert (await first_event(a))["type"] == "welcome"
    # the same client claiming another address is still the same client: over its cap of 1
    b = await open_from("127.0.0.2", "198.51.100.2")
    refused = dict(json.loads(await asyncio.wait_for(b.recv(), 5)))
    assert refused["code"] == "too_many_connections"
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(b.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4029
    # another client address gets in
    c = await open_from("127.0.0.3", "198.51.100.1")
    assert (await first_event(c))["type"] == "welcome"
    for ws in (a, c):
        await ws.close()
