"""The HTTP side of a real server: JSON API + OpenAPI, admin token, pages, origin headers,
and path tricks sent as raw bytes (no client-side normalisation)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import TidecastServer, start_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TidecastServer]:
    s = start_server(tmp_path_factory.mktemp("http") / "data")
    media = s.data_dir / "media" / "hls" / "main"
    media.mkdir(parents=True, exist_ok=True)
    (media / "source.m3u8").write_text("#EXTM3U\n#EXT-X-TARGETDURATION:2\n")
    (s.data_dir / "media" / "secret.m4s").write_bytes(b"top secret")
    yield s
    s.stop()


def raw_get(port: int, target: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert b"top secret" not in data
    return int(data.split(b" ", 2)[1])


@pytest.mark.parametrize(
    "target",
    [
        "/hls/../secret.m4s",
        "/hls/main/../../secret.m4s",
        "/hls/%2e%2e/secret.m4s",
        "/hls/main%2F..%2F..%2Fsecret.m4s",
        "/hls/main/%2e%2e%2f%2e%2e%2fsecret.m4s",
        "/hls/main/..%5c..%5csecret.m4s",
        "/hls/%252e%252e/secret.m4s",
        "/hls//etc/passwd",
        "/hls/main/source.m3u8%00.m4s",
    ],
)
def test_path_traversal_gets_4xx(srv: TidecastServer, target: str) -> None:
    status = raw_get(srv.http_port, target)
    assert 400 <= status < 500, f"{target} -> {status}"


def test_origin_headers_cors_and_404(srv: TidecastServer) -> None:
    r = httpx.get(f"{srv.http}/hls/main/source.m3u8", headers={"origin": "https://elsewhere.example"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.headers["content-type"] == "application/vnd.apple.mpegurl"
    assert "max-age=1" in r.headers["cache-control"]
    assert httpx.get(f"{srv.http}/hls/main/source.m3u8", headers={"if-none-match": r.headers["etag"]}).status_code == 304
    pre = httpx.options(
        f"{srv.http}/hls/main/source.m3u8",
        headers={"origin": "https://elsewhere.example", "access-control-request-headers": "range"},
    )
    assert pre.status_code == 204 and "Range" in pre.headers["access-control-allow-headers"]
    assert httpx.get(f"{srv.http}/hls/nobody/master.m3u8").status_code == 404
    assert httpx.head(f"{srv.http}/hls/main/source.m3u8").headers["content-length"] == str(len(r.content))


def test_api_streams_need_the_admin_token_to_change(srv: TidecastServer) -> None:
    api = f"{srv.http}/api/v1"
    assert httpx.post(f"{api}/streams", json={"name": "x1"}).status_code == 401
    bad = httpx.post(f"{api}/streams", json={"name": "x1"}, headers={"authorization": "Bearer nope"})
    assert bad.status_code == 401
    auth = {"authorization": f"Bearer {srv.admin_token}"}
    created = httpx.post(f"{api}/streams", json={"name": "x1", "title": "X one"}, headers=auth)
    assert created.status_code == 201
    body = created.json()
    assert body["stream_key"].startswith("sk_") and body["publish_url"].startswith("rtmp://")
    assert httpx.post(f"{api}/streams", json={"name": "x1"}, headers=auth).status_code == 409
    assert httpx.post(f"{api}/streams", json={"name": "../Bad Name"}, headers=auth).status_code == 422
    assert httpx.post(f"{api}/streams", content=b"{not json", headers=auth).status_code == 422
    listed = httpx.get(f"{api}/streams").json()
    assert {"main", "x1"} <= {s["name"] for s in listed}
    assert all("stream_key" not in s for s in listed)
    one = httpx.get(f"{api}/streams/x1").json()
    assert one["live"] is False and one["title"] == "X one"
    assert httpx.get(f"{api}/streams/nope").status_code == 404
    assert httpx.get(f"{api}/streams", params={"live": "true"}).json() == []


def test_openapi_and_health(srv: TidecastServer) -> None:
    spec = httpx.get(f"{srv.http}/api/v1/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert {"/api/v1/streams", "/api/v1/streams/{name}", "/api/v1/health"} <= set(spec["paths"])
    assert "post" in spec["paths"]["/api/v1/streams"]
    health = httpx.get(f"{srv.http}/api/v1/health").json()
    assert health["status"] == "ok"


def test_pages(srv: TidecastServer) -> None:
    index = httpx.get(f"{srv.http}/")
    assert index.status_code == 200 and "tidecast" in index.text
    watch = httpx.get(f"{srv.http}/watch/main")
    assert watch.status_code == 200 and "/static/hls.min.js" in watch.text
    assert httpx.get(f"{srv.http}/watch/nobody").status_code == 404
    hls_js = httpx.get(f"{srv.http}/static/hls.min.js")
    assert hls_js.status_code == 200 and len(hls_js.content) > 100_000
    assert httpx.get(f"{srv.http}/static/../node_modules").status_code == 404


def test_cli_streams_share_the_data_dir(srv: TidecastServer) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "TIDECAST_DATA_DIR": str(srv.data_dir)}
    out = subprocess.run([sys.executable, "-m", "tidecast", "streams", "create", "fromcli"],
                         env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "stream key:" in out and "/watch/fromcli" in out
    assert httpx.get(f"{srv.http}/api/v1/streams/fromcli").status_code == 200
    listed = subprocess.run([sys.executable, "-m", "tidecast", "streams", "list"],
                            env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "fromcli" in listed and "main" in listed
    dup = subprocess.run([sys.executable, "-m", "tidecast", "streams", "create", "fromcli"],
                         env=env, capture_output=True, text=True)  # fmt: skip
    assert dup.returncode == 1 and "already exists" in dup.stderr
