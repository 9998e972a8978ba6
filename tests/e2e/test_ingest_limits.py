"""Segment limits and shutdown on the real server, over real sockets.

A raw RTMP publisher that breaks a segment limit is told why (onStatus
NetStream.Publish.Rejected) and disconnected, while an ffmpeg publisher on
another stream keeps going with every segment; Ctrl-C with a live publisher
shuts down without a traceback.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TidecastServer, start_server, wait_for
from tests.e2e.test_ingest_abuse import playlist_length, publish_pattern
from tests.e2e.watch import whole_playlist
from tests.ingest.rtmp.rtmpclient import Client, Reply, avc_nalu, avc_sequence_header

pytestmark = pytest.mark.e2e

# a real 320x240 Baseline AVCDecoderConfigurationRecord (the server parses it)
AVCC = bytes.fromhex("0142c00dffe100166742c00dda0507ec0440000003004000000c83c50aa801000468ce0fc8")
NALU = b"\x00\x00\x00\x02\x41\x9a"


class RawPublisher:
    """Publishes hand-made FLV frames; collects what the server answers."""

    def __init__(self, port: int, key: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.client = Client()
        self.replies: list[Reply] = []
        self.cut = False  # the server hung up while we were sending
        self.sock.sendall(self.client.publish_prefix(key))
        self.sock.sendall(self.client.video(1, 0, avc_sequence_header(AVCC)))
        assert self.status("NetStream.Publish.Start", 10)

    def frame(self, ts: int, keyframe: bool, data: bytes = NALU) -> bool:
        """Send one frame; False once the server has closed the connection."""
        try:
            self.sock.sendall(self.client.video(1, ts, avc_nalu(data, keyframe=keyframe)))
        except (BrokenPipeError, ConnectionResetError):
            self.cut = True
            return False
        return True

    def read(self, timeout: float) -> bool:
        """Read what is there; False at EOF."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return True
        except ConnectionResetError:
            return False
        if data:
            self.replies += self.client.receive(data)
        return bool(data)

    def status(self, code: str, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while True:
            for r in self.replies:
                if r.name == "onStatus" and r.values and r.values[3]["code"] == code:
                    return dict(r.values[3])
            if time.monotonic() > deadline or not self.read(0.2):
                return None

    def closed_by_server(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.read(0.2):
                return True
        return False

    def close(self) -> None:
        self.sock.close()


class PlaylistWatch:
    """Every segment a live playlist listed, by media sequence number."""

    def __init__(self, server: TidecastServer, stream: str) -> None:
        self.url = f"{server.http}/hls/{stream}/source.m3u8"
        self.seen: dict[int, str] = {}
        self.gaps = 0

    def poll(self) -> None:
        r = httpx.get(self.url, timeout=5)
        assert r.status_code == 200, r.status_code
        self.gaps += r.text.count("#EXT-X-GAP")
        pl = whole_playlist(r.text)
        for i, seg in enumerate(pl.segments):
            self.seen.setdefault(pl.media_sequence + i, str(seg.uri))

    def assert_complete(self) -> None:
        msns = sorted(self.seen)
        assert msns == list(range(msns[0], msns[-1] + 1)), f"segments missing: {msns}"
        assert self.gaps == 0
        for msn, uri in self.seen.items():  # one broadcast: the msn is the sequence
            assert uri.endswith(f"/source/{msn:06d}.m4s"), (msn, uri)


@pytest.fixture(scope="module")
def limits_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TidecastServer, str, str]]:
    server = start_server(tmp_path_factory.mktemp("limits") / "data", "--reconnect-grace", "1")
    good, bad = server.create_stream("good"), server.create_stream("bad")
    yield server, good, bad
    server.stop()


@pytest.fixture(scope="module")
def good_publisher(limits_server: tuple[TidecastServer, str, str], ffmpeg_exe: str) -> Iterator[subprocess.Popen[bytes]]:
    server, key, _ = limits_server
    proc = publish_pattern(ffmpeg_exe, server.rtmp_url(key), 60)
    wait_for(lambda: playlist_length(server, "good") >= 2, 20, what="the good stream to be live")
    yield proc
    proc.kill()
    proc.wait()


def test_one_keyframe_then_inter_frames_is_cut_at_the_maximum_duration(
    limits_server: tuple[TidecastServer, str, str], good_publisher: subprocess.Popen[bytes]
) -> None:
    server, _, bad_key = limits_server
    watch = PlaylistWatch(server, "good")
    watch.poll()
    before = playlist_length(server, "good")
    bad = RawPublisher(server.rtmp_port, bad_key)
    t0 = time.monotonic()
    last_poll = 0.0
    # 30 s of media at 5x real time: one keyframe, then inter frames only
    for n in range(30 * 30):
        ts = n * 33
        while time.monotonic() - t0 < ts / 5000:
            time.sleep(0.002)
        if not bad.frame(ts, keyframe=n == 0):
            break
        if time.monotonic() - last_poll > 0.5:
            watch.poll()
            last_poll = time.monotonic()
    rejected = bad.status("NetStream.Publish.Rejected", 10)
    assert rejected is not None, bad.replies
    assert rejected["level"] == "error"
    assert rejected["description"] == ("no keyframe for 20.0 s (a segment may last at most 20 s): "
                                       "set the encoder's keyframe interval to 2 s")  # fmt: skip
    assert bad.closed_by_server(10)
    bad.close()
    assert time.monotonic() - t0 < 8  # cut at 20 s of media (4 s here), not at the end
    wait_for(lambda: "bad: publisher gone (publish rejected: no keyframe for 20.0 s" in server.log(),
             10, what="the server to log the refusal")  # fmt: skip
    assert "bad: publisher refused (duration)" in server.log()
    # the other stream never noticed
    assert good_publisher.poll() is None, "the good publisher was disconnected"
    end = playlist_length(server, "good")
    wait_for(lambda: playlist_length(server, "good") > end, 8, what="the good stream to keep growing")
    watch.poll()
    assert playlist_length(server, "good") >= before + 3
    watch.assert_complete()
    assert server.alive()


def test_huge_frames_are_cut_at_the_maximum_segment_size(
    limits_server: tuple[TidecastServer, str, str], good_publisher: subprocess.Popen[bytes]
) -> None:
    server, _, bad_key = limits_server
    watch = PlaylistWatch(server, "good")
    watch.poll()
    before = playlist_length(server, "good")
    bad = RawPublisher(server.rtmp_port, bad_key)
    huge = b"\x00\xef\xff\xfc" + b"\x41" * (15 * 2**20 - 8)  # 15 MiB, under the RTMP message limit
    for n in range(8):  # the 5th takes the segment past 64 MiB
        if not bad.frame(n * 33, keyframe=n == 0, data=huge):
            break
    rejected = bad.status("NetStream.Publish.Rejected", 20)
    assert rejected is not None, bad.replies
    assert rejected["description"].startswith("a segment grew past 64 MiB (")
    assert "lower the bitrate" in rejected["description"]
    assert bad.closed_by_server(10)
    bad.close()
    assert "bad: publisher refused (size)" in server.log()
    assert good_publisher.poll() is None
    wait_for(lambda: playlist_length(server, "good") > before + 1, 10, what="the good stream to keep growing")
    watch.poll()
    watch.assert_complete()


def test_ctrl_c_with_a_live_publisher_prints_no_traceback(tmp_path: Path, ffmpeg_exe: str) -> None:
    server = start_server(tmp_path / "data")
    key = server.create_stream("live")
    pub = publish_pattern(ffmpeg_exe, server.rtmp_url(key), 30)
    try:
        wait_for(lambda: playlist_length(server, "live") >= 2, 20, what="the stream to be live")
        assert server.stop(signal.SIGINT) == 0
    finally:
        pub.kill()
        pub.wait()
    log = server.log()
    assert "live: broadcast" in log and "finished (server shutdown)" in log
    assert "Traceback" not in log, log
    assert "CancelledError" not in log, log
    assert " ERROR " not in log, log
