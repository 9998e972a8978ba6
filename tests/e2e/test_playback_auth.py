"""Playback auth and AES-128 end to end: ``tidecast serve`` and the real nginx edge from
``tidecast edge-config`` in front of it, two live streams published with ffmpeg.

- ``priv``: access "token", AES-128, a new key every 2 segments;
- ``pw``: access "password", in the clear;
- ``pub``: public (its tokens are "another stream's" for the others).

Forged, expired, other-stream and missing tokens get 403 for every object type at the
origin and at the edge; ffmpeg (a plain player: imageio-ffmpeg ships no ffprobe) plays a
tokenized master URL, AES-128 included, live and VOD; Chromium plays through the edge on
the cookie the password (or a token link) buys, the second viewer from the edge's cache;
keys never come from the edge's cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import m3u8
import pytest

from tests.conftest import TidecastServer, free_port, start_server, wait_for
from tests.e2e.conftest import Clips
from tests.e2e.test_abr import publish_file
from tests.edge.test_edge_ll import NGINX
from tidecast import ffmpeg
from tidecast.access import hlskey, tokens
from tidecast.edge.nginx import EdgeConfig, render

pytestmark = pytest.mark.e2e

SECRET = "edge-and-origin-share-this-0123"
PASSWORD = "open sesame"


@dataclass
class World:
    server: TidecastServer
    edge: str
    admin: dict[str, str]
    publishers: list[subprocess.Popen[bytes]]
    tmp: Path

    def token(self, stream: str, ttl: float = 3600) -> str:
        r = httpx.post(f"{self.server.http}/api/v1/streams/{stream}/playback-tokens", json={"ttl": ttl},
                       headers=self.admin, timeout=10)  # fmt: skip
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["master_url"].endswith(f"/hls/{stream}/~{body['token']}/master.m3u8")
        return str(body["token"])

    def broadcast(self, stream: str) -> str:
        return str(
            httpx.get(f"{self.server.http}/api/v1/streams/{stream}", timeout=10).json()["broadcast"]
        )


def start_edge(prefix: Path, origin_port: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    (prefix / "cache").mkdir(parents=True)
    conf = prefix / "nginx.conf"
    conf.write_text(render(EdgeConfig(
        origins=[f"127.0.0.1:{origin_port}"], listen=f"127.0.0.1:{port}", cache_dir=str(prefix / "cache"),
        pid_file=str(prefix / "nginx.pid"), error_log=str(prefix / "error.log"), worker_processes="1",
        user="root", playback_secret=SECRET,
    )))  # fmt: skip
    check = subprocess.run(
        [NGINX, "-t", "-c", str(conf), "-p", str(prefix)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _up(url), 10, what="the nginx edge")
    return proc, url


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/v1/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, clips: Clips) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("playback")
    source = clips(640, 360, 30, 90, bitrate_k=600)
    server = start_server(tmp / "data", "--reconnect-grace", "2", "--key-rotation", "2",
                          env={"TIDECAST_PLAYBACK_SECRET": SECRET})  # fmt: skip
    admin = {"authorization": f"Bearer {server.admin_token}"}
    publishers: list[subprocess.Popen[bytes]] = []
    nginx: subprocess.Popen[bytes] | None = None
    try:
        stream_keys = {n: server.create_stream(n) for n in ("priv", "pw", "pub")}
        for name, body in (("priv", {"access": "token", "encryption": "aes-128"}),
                           ("pw", {"access": "password", "password": PASSWORD})):  # fmt: skip
            r = httpx.put(
                f"{server.http}/api/v1/streams/{name}", json=body, headers=admin, timeout=10
            )
            assert r.status_code == 200, r.text
        nginx, edge = start_edge(tmp / "edge", server.http_port)
        w = World(server, edge, admin, publishers, tmp)
        for name in ("priv", "pw"):
            publishers.append(publish_file(server, stream_keys[name], source))

        def listed(name: str) -> bool:
            r = httpx.get(f"{server.http}/hls/{name}/~{w.token(name)}/source.m3u8", timeout=5)
            return r.status_code == 200 and len(m3u8.loads(r.text).segments) >= 5

        wait_for(
            lambda: listed("priv") and listed("pw"),
            60,
            interval=0.5,
            what="5 segments of each stream",
        )
        yield w
    finally:
        for p in publishers:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
            if p.poll() is None:
                p.kill()
                p.wait()
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        server.stop()


def objects(w: World, stream: str) -> dict[str, str]:
    """One of each object type of a live stream: its path below /hls/<stream>/."""
    tok = w.token(stream)
    base = f"{w.server.http}/hls/{stream}/~{tok}/"
    master = m3u8.loads(httpx.get(base + "master.m3u8", timeout=5).text)
    media_uri = master.playlists[0].uri if master.playlists else "source.m3u8"
    media = m3u8.loads(httpx.get(base + media_uri, timeout=5).text)
    seg = media.segments[1]
    out = {"master playlist": "master.m3u8", "media playlist": media_uri,
           "init segment": seg.init_section.uri, "segment": seg.uri}  # fmt: skip
    if seg.key is not None and seg.key.uri:
        out["key"] = seg.key.uri
    return {k: posixpath.normpath(v) for k, v in out.items()}


def bad_tokens() -> dict[str, str]:
    return {
        "forged": f"{int(time.time()) + 3600}.{secrets.token_urlsafe(16)[:22]}",
        "expired": tokens.issue(SECRET, "priv", time.time() - 5),
        "other stream": tokens.issue(SECRET, "pub", time.time() + 3600),
        "other stream (pw)": tokens.issue(SECRET, "pw", time.time() + 3600),
    }


def test_every_object_type_refuses_bad_and_missing_tokens_at_origin_and_edge(world: World) -> None:
    objs = objects(world, "priv")
    assert set(objs) == {"master playlist", "media playlist", "init segment", "segment", "key"}
    good = world.token("priv")
    broadcast = world.broadcast("priv")
    api = {
        "download": f"/api/v1/broadcasts/{broadcast}/download",
        "chat replay": f"/api/v1/broadcasts/{broadcast}/chat",
    }
    checked = 0
    for where, base in (("origin", world.server.http), ("edge", world.edge)):
        with httpx.Client(base_url=base, timeout=10) as c:
            for kind, path in objs.items():
                ok = c.get(f"/hls/priv/~{good}/{path}")
                assert ok.status_code == 200, (where, kind, ok.text)
                ok = c.get(f"/hls/priv/{path}", headers={"cookie": f"{tokens.COOKIE}={good}"})
                assert ok.status_code == 200, (where, kind, "cookie", ok.text)
                assert c.get(f"/hls/priv/{path}").status_code == 403, (where, kind, "missing")
                for name, bad in bad_tokens().items():
                    r = c.get(f"/hls/priv/~{bad}/{path}")
                    assert r.status_code == 403, (where, kind, name, "path", r.status_code)
                    r = c.get(f"/hls/priv/{path}", headers={"cookie": f"{tokens.COOKIE}={bad}"})
                    assert r.status_code == 403, (where, kind, name, "cookie", r.status_code)
                    checked += 2
            for kind, path in api.items():
                assert c.get(path).status_code == 403, (where, kind, "missing")
                for name, bad in bad_tokens().items():
                    r = c.get(path, params={"playback_token": bad})
                    assert r.status_code == 403, (where, kind, name)
                    r = c.get(path, headers={"cookie": f"{tokens.COOKIE}_priv={bad}"})
                    assert r.status_code == 403, (where, kind, name, "cookie")
                    checked += 2
            assert c.get(api["chat replay"], params={"playback_token": good}).status_code == 200
            assert (
                c.get(
                    api["chat replay"], headers={"cookie": f"{tokens.COOKIE}_priv={good}"}
                ).status_code
                == 200
            )
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    for base in (world.server.http, world.edge):
        ws_base = base.replace("http://", "ws://")
        for bad in [None, *bad_tokens().values()]:
            headers = {"cookie": f"{tokens.COOKIE}={bad}"} if bad else {}
            with pytest.raises(InvalidStatus) as info:
                connect(f"{ws_base}/chat/priv", additional_headers=headers, open_timeout=5)
            assert info.value.response.status_code == 403
            checked += 1
        with connect(f"{ws_base}/chat/priv", additional_headers={"cookie": f"{tokens.COOKIE}={good}"},
                     open_timeout=5) as ws:  # fmt: skip
            ws.send(json.dumps({"type": "join", "name": "viewer"}))
            assert json.loads(ws.recv(timeout=5))["type"]
    print(f"\n{checked} refusals checked")
    # the public stream needs nothing, and a bad token in the path still fails there
    assert httpx.get(f"{world.edge}/api/v1/streams/pub", timeout=5).status_code == 200
    assert (
        httpx.get(
            f"{world.edge}/hls/pub/~{bad_tokens()['forged']}/master.m3u8", timeout=5
        ).status_code
        == 403
    )


def test_keys_rotate_and_the_edge_never_caches_them(world: World) -> None:
    tok = world.token("priv")
    text = httpx.get(f"{world.edge}/hls/priv/~{tok}/source.m3u8", timeout=5).text
    pl = m3u8.loads(text)
    uris = [s.key.uri for s in pl.segments]
    assert len(set(uris)) >= 2 and all(u.endswith(".key") for u in uris)  # rotation visible
    assert text.count("#EXT-X-KEY:METHOD=AES-128") == len(set(uris))
    assert text.index("#EXT-X-MAP") < text.index("#EXT-X-KEY")  # the init segment is clear
    key_path = f"/hls/priv/~{tok}/{uris[0]}"
    statuses = []
    for _ in range(3):
        r = httpx.get(world.edge + key_path, timeout=5)
        assert r.status_code == 200 and len(r.content) == 16
        assert r.headers["cache-control"] == "private, no-store"
        statuses.append(r.headers.get("x-cache-status", ""))
    assert "HIT" not in statuses, statuses
    # and a refused request after all those good ones is still refused (nothing came from a cache)
    assert httpx.get(f"{world.edge}/hls/priv/{uris[0]}", timeout=5).status_code == 403
    # the segment at the edge is the encrypted one, and the key decrypts it
    seg = pl.segments[2]
    enc = httpx.get(f"{world.edge}/hls/priv/~{tok}/{seg.uri}", timeout=10)
    assert enc.status_code == 200 and len(enc.content) % 16 == 0
    key = httpx.get(f"{world.edge}/hls/priv/~{tok}/{seg.key.uri}", timeout=5).content
    msn = pl.media_sequence + 2
    clear = hlskey.decrypt(enc.content, key, hlskey.iv_for(msn))
    assert clear[4:8] in (b"styp", b"moof")
    cached = httpx.get(f"{world.edge}/hls/priv/~{world.token('priv')}/{seg.uri}", timeout=10)
    assert cached.headers.get("x-cache-status") == "HIT" and cached.content == enc.content


def play_with_ffmpeg(url: str, seconds: float = 4) -> int:
    """Decode ``seconds`` of video from an HLS URL the way a plain player would; the frames."""
    out = subprocess.run([ffmpeg.ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", url,
                          "-map", "0:v:0", "-t", str(seconds), "-f", "framemd5", "-"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "error" not in out.stderr.lower() and "invalid" not in out.stderr.lower(), out.stderr[
        -2000:
    ]
    return sum(1 for line in out.stdout.splitlines() if line and not line.startswith("#"))


def test_a_tokenized_master_url_plays_in_ffmpeg(world: World) -> None:
    for stream in ("priv", "pw"):
        r = httpx.post(f"{world.server.http}/api/v1/streams/{stream}/playback-tokens", headers=world.admin,
                       timeout=10)  # fmt: skip
        master = r.json()["master_url"].replace(world.server.http, world.edge)
        assert play_with_ffmpeg(master) >= 100, stream  # 4 s at 30 fps, AES-128 for priv
    with pytest.raises(AssertionError):
        play_with_ffmpeg(f"{world.edge}/hls/priv/master.m3u8", 1)


def test_stream_settings_are_checked(world: World) -> None:
    put = f"{world.server.http}/api/v1/streams/pub"
    assert httpx.put(put, json={"access": "token"}, timeout=10).status_code == 401
    for body, what in (({"encryption": "aes-128"}, "public"), ({"access": "password"}, "password"),
                       ({"access": "secret"}, "")):  # fmt: skip
        r = httpx.put(put, json=body, headers=world.admin, timeout=10)
        assert r.status_code == 422 and what in r.text, r.text
    assert httpx.put(f"{world.server.http}/api/v1/streams/nope", json={"access": "token"}, headers=world.admin,
                     timeout=10).status_code == 404  # fmt: skip
    info = httpx.get(f"{world.server.http}/api/v1/streams/priv/playback", timeout=5).json()
    assert info == {"name": "priv", "access": "token", "token_valid": False}


@pytest.mark.browser
def test_browser_plays_on_a_cookie_through_the_edge_second_viewer_from_cache(world: World) -> None:
    from playwright.sync_api import sync_playwright

    from tests.e2e.browser import ARGS, CHROMIUM

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            caches: list[list[str]] = []
            for viewer in range(2):
                context = browser.new_context()  # a viewer of its own: no cookie yet
                page = context.new_page()
                seen: list[str] = []
                page.on("response", lambda r, seen=seen: seen.append(r.headers.get("x-cache-status", ""))
                        if r.url.endswith(".m4s") else None)  # fmt: skip
                page.goto(f"{world.edge}/watch/pw")
                page.wait_for_selector("#password-form", timeout=15_000)
                if viewer == 0:
                    page.fill("#password", "not it")
                    page.click("#password-form button")
                    page.wait_for_function(
                        "document.querySelector('#password-error').textContent !== ''"
                    )
                page.fill("#password", PASSWORD)
                page.click("#password-form button")
                page.wait_for_function("window.tidecastPlayer.state === 'playing'", timeout=30_000)
                page.wait_for_function(
                    "document.querySelector('video').currentTime > 2", timeout=30_000
                )
                caches.append(seen)
                context.close()
            assert "HIT" in caches[1], caches
            # AES-128 in hls.js, from a token link (taken out of the address bar)
            page = browser.new_page()
            page.goto(f"{world.edge}/watch/priv?token={world.token('priv')}")
            page.wait_for_function("window.tidecastPlayer.state === 'playing'", timeout=30_000)
            page.wait_for_function(
                "document.querySelector('video').currentTime > 2", timeout=30_000
            )
            assert "token=" not in page.url
            errors = page.evaluate("window.tidecastPlayer.errors")
            assert not [e for e in errors if "fatal" in e], errors
        finally:
            browser.close()


def test_password_exchange_wrong_refused_and_rate_limited(world: World) -> None:
    """After the browser test: this address (the edge's too) is limited for a minute after it."""
    url = f"{world.server.http}/api/v1/streams/pw/playback-session"
    r = httpx.post(url, json={"password": PASSWORD}, timeout=10)
    assert r.status_code == 200, r.text
    cookies = r.headers.get_list("set-cookie")
    assert len(cookies) == 3 and all("HttpOnly" in c for c in cookies)
    assert any("Path=/hls/pw/" in c for c in cookies)
    tok = r.json()["token"]
    assert (
        httpx.get(
            f"{world.server.http}/hls/pw/master.m3u8", cookies={tokens.COOKIE: tok}, timeout=5
        ).status_code
        == 200
    )
    assert httpx.post(f"{world.server.http}/api/v1/streams/priv/playback-session", json={"password": PASSWORD},
                      timeout=10).status_code == 403  # fmt: skip
    codes = [
        httpx.post(url, json={"password": f"guess {i}"}, timeout=10).status_code for i in range(7)
    ]
    first = codes.index(429)  # 5 wrong ones a minute from one address (the browser test made one)
    assert 4 <= first <= 5 and codes[:first] == [403] * first and set(codes[first:]) == {429}, codes
    limited = httpx.post(url, json={"password": PASSWORD}, timeout=10)
    assert (
        limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    )  # the right one too, for now


def test_vod_keeps_its_keys_and_plays(world: World) -> None:
    """Last: ends the broadcasts."""
    broadcast = world.broadcast("priv")
    for p in world.publishers:
        p.send_signal(signal.SIGINT)
        p.wait(10)

    def vod_ready() -> bool:
        r = httpx.get(f"{world.server.http}/api/v1/broadcasts/{broadcast}", timeout=5)
        return r.status_code == 200 and r.json()["vod"]

    wait_for(vod_ready, 60, interval=0.5, what="the VOD")
    tok = world.token("priv")
    base = f"{world.edge}/hls/priv/~{tok}/{broadcast}/"
    media = m3u8.loads(httpx.get(base + "source.m3u8", timeout=5).text)
    assert media.segments and all(
        s.key is not None and s.key.method == "AES-128" for s in media.segments
    )
    assert len({s.key.uri for s in media.segments}) >= 2
    assert httpx.get(f"{world.edge}/hls/priv/{broadcast}/master.m3u8", timeout=5).status_code == 403
    assert play_with_ffmpeg(base + "master.m3u8", 3) >= 60
    r = httpx.get(f"{world.server.http}/api/v1/broadcasts/{broadcast}/download", params={"playback_token": tok},
                  timeout=60)  # fmt: skip
    assert r.status_code == 200 and r.content[4:8] == b"ftyp"  # downloads: the clear recording
    if os.environ.get("TIDECAST_PLAYBACK_VOD_BROWSER", "1") == "1":
        from tests.e2e.browser import chromium_page

        with chromium_page() as page:
            page.goto(f"{world.edge}/videos/{broadcast}?token={tok}")  # type: ignore[attr-defined]
            page.wait_for_function(  # type: ignore[attr-defined]
                "document.querySelector('video').currentTime > 2", timeout=30_000
            )
