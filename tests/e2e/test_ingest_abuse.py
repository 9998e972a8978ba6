"""Bad publishers over real sockets: each is refused clearly, the server keeps
serving a stream that is live at the same time, and other streams are untouched."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import TidecastServer, start_server, wait_for
from tests.e2e.watch import whole_playlist
from tidecast import ffmpeg

pytestmark = pytest.mark.e2e


def publish_pattern(exe: str, url: str, seconds: float, size: str = "320x240") -> subprocess.Popen[bytes]:
    w, h = (int(x) for x in size.split("x"))
    p = ffmpeg.TestPattern(width=w, height=h, duration=seconds, clock=False, video_bitrate_k=400)
    return subprocess.Popen(
        ffmpeg.publish_test_pattern_args(p, url, exe), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def playlist_length(server: TidecastServer, name: str) -> int:
    r = httpx.get(f"{server.http}/hls/{name}/source.m3u8")
    if r.status_code != 200:
        return -1
    pl = whole_playlist(r.text)
    return pl.media_sequence + len(pl.segments)


def handshake(sock: socket.socket) -> None:
    sock.sendall(b"\x03" + struct.pack(">II", 0, 0) + os.urandom(1528))
    got = b""
    while len(got) < 1 + 1536 * 2:
        chunk = sock.recv(8192)
        assert chunk, "server closed during the handshake"
        got += chunk
    assert got[0] == 3
    sock.sendall(got[1 : 1 + 1536])  # C2 echoes S1


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            continue  # replies the server sent before hanging up
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


@pytest.fixture(scope="module")
def abuse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TidecastServer, str]]:
    server = start_server(
        tmp_path_factory.mktemp("abuse") / "data", "--reconnect-grace", "1",
        env={"TIDECAST_RTMP_HANDSHAKE_TIMEOUT": "2"},
    )  # fmt: skip
    key = server.create_stream("good")
    yield server, key
    server.stop()


@pytest.fixture(scope="module")
def good_publisher(abuse_server: tuple[TidecastServer, str], ffmpeg_exe: str) -> Iterator[subprocess.Popen[bytes]]:
    server, key = abuse_server
    proc = publish_pattern(ffmpeg_exe, server.rtmp_url(key), 40)
    wait_for(lambda: playlist_length(server, "good") >= 2, 20, what="the good stream to be live")
    yield proc
    proc.kill()
    proc.wait()


def assert_still_serving(server: TidecastServer, pub: subprocess.Popen[bytes]) -> None:
    assert server.alive(), server.log()
    assert pub.poll() is None, "the good publisher was disconnected"
    before = playlist_length(server, "good")
    wait_for(lambda: playlist_length(server, "good") > before, 8, what="the good stream to keep growing")
    assert httpx.get(f"{server.http}/api/v1/health").json()["status"] == "ok"


def test_wrong_key_is_refused(abuse_server: tuple[TidecastServer, str], good_publisher: subprocess.Popen[bytes], ffmpeg_exe: str) -> None:
    server, _ = abuse_server
    bad = publish_pattern(ffmpeg_exe, server.rtmp_url("sk_not_a_real_key"), 5)
    _, err = bad.communicate(timeout=30)
    assert bad.returncode != 0
    assert b"unknown stream key" in err, err
    assert "refused publish" in server.log() and "unknown stream key" in server.log()
    assert_still_serving(server, good_publisher)


def test_duplicate_publish_is_refused(abuse_server: tuple[TidecastServer, str], good_publisher: subprocess.Popen[bytes], ffmpeg_exe: str) -> None:
    server, key = abuse_server
    dup = publish_pattern(ffmpeg_exe, server.rtmp_url(key), 5)
    _, err = dup.communicate(timeout=30)
    assert dup.returncode != 0
    assert b"already has a publisher" in err, err
    assert "already live" in server.log()
    assert_still_serving(server, good_publisher)


def test_garbage_bytes_are_dropped(abuse_server: tuple[TidecastServer, str], good_publisher: subprocess.Popen[bytes]) -> None:
    server, _ = abuse_server
    for payload in (b"\x00" * 4096, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(20000)):
        with socket.create_connection(("127.0.0.1", server.rtmp_port)) as s:
            s.sendall(payload)
            assert closed_by_server(s, 5), f"server kept a connection that sent {payload[:16]!r}"
    # garbage after a valid handshake
    with socket.create_connection(("127.0.0.1", server.rtmp_port)) as s:
        handshake(s)
        s.sendall(b"\xc3" * 10 + os.urandom(5000))
        assert closed_by_server(s, 5)
    assert "protocol error" in server.log()
    assert_still_serving(server, good_publisher)


def test_client_that_stops_mid_handshake_is_timed_out(abuse_server: tuple[TidecastServer, str], good_publisher: subprocess.Popen[bytes]) -> None:
    server, _ = abuse_server
    with socket.create_connection(("127.0.0.1", server.rtmp_port)) as s:
        s.sendall(b"\x03" + os.urandom(700))  # half of C1, then silence
        t0 = time.monotonic()
        assert closed_by_server(s, 10)
        assert time.monotonic() - t0 < 8
    assert "no publish within" in server.log()
    assert_still_serving(server, good_publisher)


def test_two_gigabyte_chunk_size_claim_is_refused(abuse_server: tuple[TidecastServer, str], good_publisher: subprocess.Popen[bytes]) -> None:
    server, _ = abuse_server
    with socket.create_connection(("127.0.0.1", server.rtmp_port)) as s:
        handshake(s)
        # fmt 0, csid 2, timestamp 0, length 4, type 1 (Set Chunk Size), stream 0
        header = b"\x02" + b"\x00\x00\x00" + b"\x00\x00\x04" + b"\x01" + struct.pack("<I", 0)
        s.sendall(header + struct.pack(">I", 0x7FFFFFFF))
        # then a "message" claiming to be huge
        s.sendall(b"\x03" + b"\x00\x00\x00" + b"\xff\xff\xff" + b"\x14" + struct.pack("<I", 0) + b"x" * 1000)
        assert closed_by_server(s, 5)
    assert "chunk size" in server.log()
    assert_still_serving(server, good_publisher)


def test_unknown_app_is_refused(abuse_server: tuple[TidecastServer, str], good_publisher: subprocess.Popen[bytes], ffmpeg_exe: str) -> None:
    server, key = abuse_server
    url = f"rtmp://127.0.0.1:{server.rtmp_port}/other/{key}"
    bad = publish_pattern(ffmpeg_exe, url, 3)
    bad.communicate(timeout=30)
    assert bad.returncode != 0
    assert "unknown app" in server.log()
    assert_still_serving(server, good_publisher)
