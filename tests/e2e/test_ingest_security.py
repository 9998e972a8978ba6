"""Ingest security end to end: RTMPS (ffmpeg, GStreamer) and HTTPS with a self-signed
certificate; ingest JWTs (API-issued, external JWKS); the on_publish webhooks; CIDR
rules; the per-address connection cap. Real servers, real sockets, real encoders;
loopback addresses (127.0.0.x) stand in for distinct clients. Bans after many wrong keys
and the connect-to-publish deadline are tested in tests/e2e/test_hostile.py, among every
other attack at once."""

from __future__ import annotations

import json
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import TidecastServer, free_port, start_server, wait_for
from tests.e2e.conftest import Clips
from tests.e2e.rtmp_probe import connect_from, probe_publish
from tests.e2e.test_ingest_abuse import playlist_length
from tests.ingest.httpstub import StubServer
from tidecast.tls import make_self_signed

pytestmark = pytest.mark.e2e

ISSUER = "https://idp.test"
DEADLINE = 3.0  # s from connect to publish on the test servers


def hook_answer(path: str, body: Any) -> tuple[int, bytes, float]:
    stream = body.get("stream") if isinstance(body, dict) else None
    if path == "/jwks.json":
        return 200, json.dumps({"keys": [JWK]}).encode(), 0
    if path == "/on_publish" and stream == "hookdeny":
        return 403, b"this stream is suspended", 0
    if path == "/on_publish" and stream == "hookslow":
        return 200, b"", 4.0
    return 200, b"{}", 0


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWK = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key())), "kid": "idp-1"}


@pytest.fixture(scope="module")
def hooks() -> Iterator[StubServer]:
    with StubServer(hook_answer) as stub:
        yield stub


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory, hooks: StubServer,
           tls_pair: tuple[Path, Path]) -> Iterator[TidecastServer]:  # fmt: skip
    cert, key = tls_pair
    server = start_server(
        tmp_path_factory.mktemp("secure") / "data", "--reconnect-grace", "1",
        "--rtmps-port", str(free_port()), "--tls-cert", str(cert), "--tls-key", str(key),
        env={
            "TIDECAST_HTTPS_PORT": str(free_port()),
            "TIDECAST_INGEST_JWKS_URL": hooks.url("/jwks.json"),
            "TIDECAST_INGEST_JWKS_ISSUER": ISSUER,
            "TIDECAST_ON_PUBLISH_URL": hooks.url("/on_publish"),
            "TIDECAST_ON_PUBLISH_DONE_URL": hooks.url("/on_publish_done"),
            "TIDECAST_WEBHOOK_TIMEOUT": "1",
            "TIDECAST_INGEST_DENY": "127.0.0.2",
            "TIDECAST_INGEST_MAX_FAILURES": "20",
            "TIDECAST_INGEST_BAN_SECONDS": "300",
            "TIDECAST_RTMP_HANDSHAKE_TIMEOUT": str(DEADLINE),
        },
    )  # fmt: skip
    yield server
    server.stop()
    assert "Traceback" not in server.log(), server.log()


def ports(server: TidecastServer) -> tuple[int, int]:
    """(RTMPS, HTTPS) ports the server printed in its banner (once every listener is up)."""
    wait_for(lambda: "tidecast is running" in server.log(), 15, what="the start-up banner")
    log = server.log()
    rtmps = int(log.split("publish over TLS:      rtmps://127.0.0.1:")[1].split("/")[0])
    https = int(log.split("HTTPS:                 https://127.0.0.1:")[1].split("/")[0])
    return rtmps, https


def client_tls(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def admin(server: TidecastServer) -> dict[str, str]:
    return {"authorization": f"Bearer {server.admin_token}"}


def publish_clip(clip: Path, url: str, *extra: str) -> subprocess.Popen[bytes]:
    from tidecast import ffmpeg

    cmd = [ffmpeg.ffmpeg_exe(), "-hide_banner", "-loglevel", "warning", "-re", "-i", str(clip),
           "-c", "copy", "-f", "flv", *extra, url]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes], timeout: float = 30) -> bytes:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    return err


# ---------------------------------------------------------------------- TLS
def test_rtmps_from_ffmpeg_and_https(secure: TidecastServer, clips: Clips,
                                     tls_pair: tuple[Path, Path]) -> None:  # fmt: skip
    cert, _ = tls_pair
    rtmps, https = ports(secure)
    key = secure.create_stream("tlsff")
    # ffmpeg verifies the certificate against the self-signed file
    pub = publish_clip(clips(320, 240, 30, 6), f"rtmps://127.0.0.1:{rtmps}/live/{key}", "-ca_file", str(cert))
    try:
        wait_for(lambda: playlist_length(secure, "tlsff") >= 2, 20, what="segments published over RTMPS")
    finally:
        err = finish(pub)
    assert pub.returncode == 0, err
    assert "tlsff: live from 127.0.0.1" in secure.log() and "over rtmps" in secure.log()
    with httpx.Client(verify=client_tls(cert), timeout=10) as c:
        assert c.get(f"https://localhost:{https}/api/v1/health").json()["status"] == "ok"
        r = c.get(f"https://127.0.0.1:{https}/hls/tlsff/source.m3u8")
        assert r.status_code == 200 and "#EXTINF" in r.text
    with pytest.raises(httpx.ConnectError):  # a client that trusts nothing here refuses it
        httpx.get(f"https://127.0.0.1:{https}/api/v1/health", timeout=5)
    assert httpx.get(f"{secure.http}/api/v1/health", timeout=5).status_code == 200  # plain HTTP too


@pytest.mark.skipif(shutil.which("gst-launch-1.0") is None,
                    reason="GStreamer not installed (scripts/setup.sh --test installs it)")  # fmt: skip
def test_rtmps_from_gstreamer_rtmp2sink(secure: TidecastServer, clips: Clips) -> None:
    rtmps, _ = ports(secure)
    key = secure.create_stream("tlsgst")
    clip = clips(320, 240, 30, 6)
    # tls-validation-flags=0: the self-signed certificate, as an encoder is told to take it
    cmd = ["gst-launch-1.0", "-q", "filesrc", f"location={clip}", "!", "flvdemux", "name=d",
           "d.video", "!", "queue", "!", "h264parse", "!", "flvmux", "name=m", "streamable=true",
           "!", "rtmp2sink", f"location=rtmps://127.0.0.1:{rtmps}/live/{key}",
           "tls-validation-flags=0", "d.audio", "!", "queue", "!", "aacparse", "!", "m."]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: playlist_length(secure, "tlsgst") >= 2, 30, what="segments from GStreamer over RTMPS")
    finally:
        out = finish(proc)
    assert "tlsgst: live from 127.0.0.1" in secure.log(), out
    assert "over rtmps" in secure.log()


# ---------------------------------------------------------------------- ingest JWTs
def live(server: TidecastServer, name: str) -> bool:
    return bool(httpx.get(f"{server.http}/api/v1/streams/{name}", timeout=5).json()["live"])


def ingest_secret(server: TidecastServer) -> bytes:
    return (server.data_dir / "ingest-secret").read_bytes()


def claims(stream: str, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"aud": "tidecast-ingest", "iss": "tidecast", "stream": stream, "nbf": now - 1,
            "iat": now, "exp": now + 300, "jti": "t", **over}  # fmt: skip


def test_ingest_tokens(secure: TidecastServer, clips: Clips) -> None:
    secure.create_stream("tok")
    url = f"{secure.http}/api/v1/streams/tok/ingest-tokens"
    assert httpx.post(url, timeout=5).status_code == 401
    assert httpx.post(f"{secure.http}/api/v1/streams/nope/ingest-tokens", headers=admin(secure),
                      timeout=5).status_code == 404  # fmt: skip
    assert httpx.post(url, headers=admin(secure), json={"ttl": 5}, timeout=5).status_code == 422
    r = httpx.post(url, headers=admin(secure), json={"ttl": 600}, timeout=5)
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) >= {"token", "expires"} and body["expires"] == pytest.approx(time.time() + 600, abs=5)
    token = body["token"]

    # valid: a real publish with the token in place of the key
    pub = publish_clip(clips(320, 240, 30, 4), f"{secure.rtmp_url(token)}")
    try:
        wait_for(lambda: playlist_length(secure, "tok") >= 1, 20, what="a publish with an ingest token")
    finally:
        err = finish(pub)
    assert pub.returncode == 0, err
    wait_for(lambda: re.search(r"tok: broadcast \S+ finished", secure.log()) is not None, 10,
             what="the token's broadcast to end")  # fmt: skip

    # and as <stream>?token=..., the way OBS users paste it
    v = probe_publish(secure.rtmp_port, f"tok?token={token}")
    assert v.accepted, v
    secret = ingest_secret(secure)
    cases = {
        "token expired": jwt.encode(claims("tok", exp=int(time.time()) - 60), secret, "HS256"),
        "token is for stream 'tok', not 'main'": f"main?token={token}",
        "token signature does not verify": jwt.encode(claims("tok"), b"k" * 32, "HS256"),
    }
    for why, name in cases.items():
        v = probe_publish(secure.rtmp_port, name)
        assert not v.accepted and v.code == "NetStream.Publish.BadName" and v.description == why, v
        assert why in secure.log()
    # an external issuer's token, checked against its JWKS
    ext = jwt.encode(claims("tok", iss=ISSUER, jti="ext-1"), RSA_KEY, "RS256", headers={"kid": "idp-1"})
    wait_for(lambda: not live(secure, "tok"), 5, what="the previous probe's publish to end")
    v = probe_publish(secure.rtmp_port, ext)
    assert v.accepted, v
    wrong_iss = jwt.encode(claims("tok", iss="https://other"), RSA_KEY, "RS256", headers={"kid": "idp-1"})
    v = probe_publish(secure.rtmp_port, wrong_iss)
    assert not v.accepted and "issuer" in v.description


# ---------------------------------------------------------------------- webhooks
def test_on_publish_webhooks(secure: TidecastServer, hooks: StubServer) -> None:
    keys = {name: secure.create_stream(name) for name in ("hookok", "hookdeny", "hookslow")}
    v = probe_publish(secure.rtmp_port, keys["hookok"])
    assert v.accepted, v
    sent = [b for b in hooks.bodies("/on_publish") if b["stream"] == "hookok"]
    assert sent and sent[0]["app"] == "live" and sent[0]["client_ip"] == "127.0.0.1"
    assert sent[0]["key_id"].startswith("key:") and keys["hookok"] not in json.dumps(sent[0])
    wait_for(lambda: any(b["stream"] == "hookok" for b in hooks.bodies("/on_publish_done")), 10,
             what="on_publish_done")  # fmt: skip

    v = probe_publish(secure.rtmp_port, keys["hookdeny"])
    assert not v.accepted and v.code == "NetStream.Publish.BadName"
    assert v.description == "refused by the on_publish webhook (403: this stream is suspended)"

    t0 = time.monotonic()
    v = probe_publish(secure.rtmp_port, keys["hookslow"])
    assert not v.accepted and "did not answer" in v.description and "refused by rule" in v.description
    assert time.monotonic() - t0 < 2.5
    assert "on_publish webhook did not answer" in secure.log()


def test_webhook_timeout_rule_allow(tmp_path: Path, hooks: StubServer) -> None:
    server = start_server(tmp_path / "data", env={
        "TIDECAST_ON_PUBLISH_URL": hooks.url("/on_publish"), "TIDECAST_WEBHOOK_TIMEOUT": "0.5",
        "TIDECAST_WEBHOOK_TIMEOUT_RULE": "allow",
    })  # fmt: skip
    try:
        key = server.create_stream("hookslow")
        v = probe_publish(server.rtmp_port, key)
        assert v.accepted, v
        assert "did not answer" in server.log() and "allowed by rule" in server.log()
    finally:
        server.stop()


# ---------------------------------------------------------------------- addresses
def test_cidr_rules_global_and_per_stream(secure: TidecastServer) -> None:
    key = secure.create_stream("cidr")
    v = probe_publish(secure.rtmp_port, key, source="127.0.0.2")  # global ingest_deny
    assert not v.accepted and v.code == "NetConnection.Connect.Rejected"
    assert v.description == "address 127.0.0.2 is denied (127.0.0.2/32)"
    assert "refused connect: address 127.0.0.2 is denied" in secure.log()

    url = f"{secure.http}/api/v1/streams/cidr/ingest-access"
    r = httpx.put(url, headers=admin(secure), json={"allow": ["127.0.0.0/29"], "deny": ["127.0.0.5"]}, timeout=5)
    assert r.status_code == 200 and r.json() == {"allow": ["127.0.0.0/29"], "deny": ["127.0.0.5/32"]}
    bad = httpx.put(url, headers=admin(secure), json={"allow": ["127.0.0.1/8"]}, timeout=5)
    assert bad.status_code == 422 and "127.0.0.1/8" in bad.text
    assert httpx.put(url, json={}, timeout=5).status_code == 401
    v = probe_publish(secure.rtmp_port, key, source="127.0.0.5")
    assert not v.accepted and v.description == "address 127.0.0.5 is denied (127.0.0.5/32) for stream 'cidr'"
    v = probe_publish(secure.rtmp_port, key, source="127.0.0.9")
    assert not v.accepted and "not in the allow list for stream 'cidr'" in v.description
    v = probe_publish(secure.rtmp_port, key, source="127.0.0.6")
    assert v.accepted, v


# ---------------------------------------------------------------------- connection limits
# (a thousand wrong keys banning an address, and 300 clients trickling their handshake past
# the connect-to-publish deadline: tests/e2e/test_hostile.py, with every other attack at once)
def test_per_address_connection_cap(secure: TidecastServer) -> None:
    held = [connect_from(secure.rtmp_port, "127.0.0.50") for _ in range(16)]
    try:
        extra = connect_from(secure.rtmp_port, "127.0.0.50")
        extra.settimeout(2)
        t0 = time.monotonic()
        try:
            got = extra.recv(1)
        except ConnectionResetError:
            got = b""
        assert got == b"" and time.monotonic() - t0 < 1.5, "the 17th connection was not closed"
        extra.close()
        other = connect_from(secure.rtmp_port, "127.0.0.51")
        v = probe_publish(secure.rtmp_port, "sk_whatever", source="127.0.0.51")
        assert v.description == "unknown stream key"  # served, not capped
        other.close()
    finally:
        for s in held:
            s.close()
    assert "16 connections from 127.0.0.50 already" in secure.log()
