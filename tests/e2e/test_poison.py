"""Bad bus messages on every pipeline subject and on chat, on both buses: garbage,
truncated JSON, an unknown message type, a message without a required field, one with a
field of the wrong type, and messages that decode but that no handler can take. Every
consumer goes on (a real publish afterwards goes through the whole pipeline), each
poison message is counted once and lands in ``dead.*`` once, and a message with an
unknown extra field (a newer sender in a rolling upgrade) is taken as it is.

The whole of ``tidecast serve`` runs in the test's process (the same composition the
command runs), so the bytes can be put on the in-process bus too."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import websockets

from tests.bus.test_bus_contract import NATS_URL, ensure_nats
from tidecast import ffmpeg
from tidecast.bus.consumer import read_dead_letters
from tidecast.bus.nats import NatsBus
from tidecast.config import Settings
from tidecast.messages import ChatEvent, Message, SegmentReady, TranscodeJob, TranscodeLag, encode
from tidecast.metrics import REGISTRY
from tidecast.node import Node

pytestmark = pytest.mark.e2e

SUBJECTS = ("job.transcode.p", "job.heal.p", "segment.p", "broadcast.p", "chat.p", "event.transcode.p")
GOOD_SEGMENT = SegmentReady("p", "b", "240p", 1, 10.0, 2.0, "hls/p/b/240p/init-x.mp4",
                            "hls/p/b/240p/000001.m4s", 100)  # fmt: skip


def poison_set() -> list[bytes]:
    good = encode(GOOD_SEGMENT)
    body = json.loads(good)["body"]
    missing = {"kind": "segment.ready", "body": {k: v for k, v in body.items() if k != "sequence"}}
    wrong = {"kind": "segment.ready", "body": {**body, "sequence": "seven"}}
    return [
        b"\x00\xffnot json at all",
        good[: len(good) // 2],  # truncated
        json.dumps({"kind": "no.such.kind", "body": {}}).encode(),
        json.dumps(missing).encode(),
        json.dumps(wrong).encode(),
    ]


def with_extra(msg: Message) -> bytes:
    raw = json.loads(encode(msg))
    raw["body"]["added_in_a_later_version"] = {"x": 1}
    return json.dumps(raw).encode()


def poison_count() -> dict[str, float]:
    fam = REGISTRY.counter("tidecast_bus_poison_messages_total", "", ("subject",))
    return {s: fam.value(subject=s) for s in ("job", "segment", "broadcast", "chat", "event")}


def dead_count(consumer: str, root: str) -> float:
    fam = REGISTRY.counter("tidecast_bus_dead_letters_total", "", ("subject", "consumer"))
    return fam.value(subject=root, consumer=consumer)


@pytest.fixture(params=["memory", "nats"])
async def node(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Node]:
    extra: dict[str, object] = {}
    if request.param == "nats":
        ensure_nats()
        extra = {"bus_url": NATS_URL, "bus_prefix": "poi" + secrets.token_hex(3)}
    settings = Settings(host="127.0.0.1", http_port=0, rtmp_port=0, data_dir=tmp_path / "data",
                        ladder="240:300,144:150", passthrough=False, workers=1, x264_preset="ultrafast", reconnect_grace=0,
                        playlist_window=50, **extra)  # type: ignore[arg-type]  # fmt: skip
    n = Node(settings)
    await n.start()
    try:
        yield n
    finally:
        await n.aclose()
        if isinstance(n.bus, NatsBus):
            cleanup = NatsBus(NATS_URL, prefix=settings.bus_prefix)
            await cleanup.start()
            await cleanup.delete_stream()
            await cleanup.aclose()


async def test_every_consumer_survives_bad_messages(node: Node, tmp_path: Path, ffmpeg_exe: str) -> None:
    bus = node.bus
    http = f"http://127.0.0.1:{node.http_port}"
    key = node.db.create_stream("p", "").key
    seen: list[Message] = []
    tap = bus.subscribe("job.transcode.p")  # a copy of the real jobs, to send one back later
    await bus.ready()

    async def chat_client(out: list[dict[str, object]]) -> None:
        async with websockets.connect(f"ws://127.0.0.1:{node.http_port}/chat/p") as ws:
            await ws.send(json.dumps({"type": "join", "name": "watcher"}))
            while True:
                out.append(json.loads(await ws.recv()))

    events: list[dict[str, object]] = []
    client = asyncio.create_task(chat_client(events))
    try:
        await asyncio.sleep(0.5)
        before = poison_count()
        bad = poison_set()
        for subject in SUBJECTS:
            for data in bad:
                await bus.publish_raw(subject, data)
        # messages that decode, but that their handlers refuse (a bug, or a sender gone wrong)
        dead_chat, dead_pkg = dead_count("chat", "chat"), dead_count("packager", "segment")
        await bus.publish("chat.p", ChatEvent("p", "elsewhere", {"type": "ban"}))  # no user
        await bus.publish("segment.p", replace(GOOD_SEGMENT, segment_key="../../etc/passwd"))

        async def counted() -> bool:
            now = poison_count()
            return all(now[s.split(".")[0]] - before[s.split(".")[0]] >= len(bad) * n
                       for s, n in (("job", 2), ("segment", 1), ("broadcast", 1), ("chat", 1), ("event", 1)))  # fmt: skip

        for _ in range(100):
            if await counted():
                break
            await asyncio.sleep(0.1)
        after = poison_count()
        # each counted once, however many consumers of this process received it
        assert {k: after[k] - before[k] for k in after} == {
            "job": 2 * len(bad), "segment": len(bad), "broadcast": len(bad), "chat": len(bad),
            "event": len(bad)}, after  # fmt: skip
        for _ in range(50):
            if dead_count("chat", "chat") > dead_chat and dead_count("packager", "segment") > dead_pkg:
                break
            await asyncio.sleep(0.1)
        assert dead_count("chat", "chat") == dead_chat + 1
        assert dead_count("packager", "segment") == dead_pkg + 1

        # every consumer goes on: a real publish goes through ingest, transcoding, packaging
        p = ffmpeg.TestPattern(width=426, height=240, duration=6, clock=False, video_bitrate_k=300,
                               preset="ultrafast")  # fmt: skip
        pub = await asyncio.create_subprocess_exec(
            *ffmpeg.publish_test_pattern_args(p, f"rtmp://127.0.0.1:{node.rtmp.port}/live/{key}", ffmpeg_exe),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        assert await asyncio.wait_for(pub.wait(), 40) == 0
        async with httpx.AsyncClient(base_url=http, timeout=5) as web:
            for _ in range(300):
                texts = [(await web.get(f"/hls/p/{r}.m3u8")).text for r in ("240p", "144p", "audio")]
                if all("#EXT-X-ENDLIST" in t for t in texts):
                    break
                await asyncio.sleep(0.1)
            assert all("#EXT-X-ENDLIST" in t and ".m4s" in t for t in texts), texts
            assert not any("passwd" in t for t in texts)
        while (d := await tap.next(0.1)) is not None:
            seen.append(d.message)
        job = next(m for m in seen if isinstance(m, TranscodeJob))

        # a newer sender's extra field is taken: a chat notice shown, a job run again (its
        # outputs are reused), a lag report counted
        reused = node.transcoder.snapshot()["reused"] if node.transcoder else 0
        await bus.publish_raw("chat.p", with_extra(ChatEvent("p", "elsewhere", {"type": "notice", "text": "hi"})))
        await bus.publish_raw("job.transcode.p", with_extra(job))
        await bus.publish_raw("event.transcode.p", with_extra(TranscodeLag("p", job.broadcast, 4.5)))
        for _ in range(200):
            got_notice = any(e.get("type") == "notice" and e.get("text") == "hi" for e in events)
            again = node.transcoder is not None and node.transcoder.snapshot()["reused"] > reused
            if got_notice and again:
                break
            await asyncio.sleep(0.1)
        assert got_notice and again
        lag = REGISTRY.gauge("tidecast_transcode_lag_seconds", "", ("stream",)).value(stream="p")
        assert lag == 4.5
        assert poison_count() == after  # none of these was poison

        # and every poison message is in dead.* exactly once, with its bytes
        letters = [d for d in await read_dead_letters(bus) if d.consumer != "chat" and d.consumer != "packager"]
        by_subject: dict[str, list[bytes]] = {}
        for d in letters:
            by_subject.setdefault(d.subject, []).append(d.data())
        for subject in SUBJECTS:
            assert sorted(by_subject.get(subject, [])) == sorted(bad), subject
    finally:
        client.cancel()
        await asyncio.gather(client, return_exceptions=True)
        await tap.aclose()
