"""A tiny real source for transcode tests: 1 s of 320x180 H.264 made with lavfi, cut
by the segmenter into one stored CMAF source segment, and jobs for it."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import pytest

from tidecast import keys
from tidecast.bus.base import Delivery, Subscription
from tidecast.media.frames import MediaFrame, TrackKind, VideoConfig
from tidecast.media.h264 import parse_avcc
from tidecast.messages import Message, TranscodeJob
from tidecast.segmenter import cmaf
from tidecast.segmenter.core import Segmenter
from tidecast.store.local import LocalStore
from tidecast.transcode.ladder import parse_ladder, rungs_for_source

WIDTH, HEIGHT = 320, 180
LADDER = parse_ladder("180:300,120:150")  # two small rungs: 180p and 120p
STREAM = "tiny"


@dataclass(frozen=True)
class SourceBytes:
    config: VideoConfig
    init: bytes
    segment: bytes
    start: float
    duration: float


@pytest.fixture(scope="session")
def source_bytes(tmp_path_factory: pytest.TempPathFactory, ffmpeg_exe: str) -> SourceBytes:
    path = tmp_path_factory.mktemp("tiny") / "tiny.mp4"
    subprocess.run(
        [ffmpeg_exe, "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate=30:duration=1",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "30", "-bf", "0",
         str(path)],
        check=True, timeout=60,
    )  # fmt: skip
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        config = parse_avcc(bytes(stream.codec_context.extradata or b""))
        for p in container.demux(stream):
            if p.size == 0 or p.dts is None or p.pts is None or p.time_base is None:
                continue
            tb = Fraction(p.time_base)
            ms = (round(p.dts * tb * 1000), round(p.pts * tb * 1000))
            frames.append(MediaFrame(TrackKind.VIDEO, *ms, bytes(p), p.is_keyframe, time.time()))
    seg = Segmenter(target=2.0)
    cut = seg.set_video_config(config)
    for f in frames:
        cut += seg.push(f)
    cut += seg.flush()
    assert len(cut) == 1 and len(cut[0].video) == 30, "expected one 1 s source segment"
    s = cut[0]
    return SourceBytes(config, cmaf.init_segment(config, None), cmaf.media_segment(s), s.start, s.duration)


@dataclass
class Media:
    """A store holding the source segment under sequence numbers 0..n-1 of one broadcast."""

    store: LocalStore
    broadcast: str
    src: SourceBytes

    @property
    def url(self) -> str:
        return self.store.root.as_uri()

    async def add(self, sequence: int) -> None:
        await self.store.put(keys.segment(STREAM, self.broadcast, "source", sequence), self.src.segment)

    def job(self, sequence: int, **kw: object) -> TranscodeJob:
        rungs = rungs_for_source(LADDER, WIDTH, HEIGHT)
        j = TranscodeJob(
            stream=STREAM, broadcast=self.broadcast, sequence=sequence,
            start=self.src.start + sequence * self.src.duration, duration=self.src.duration,
            source_init_key=keys.source_init(STREAM, self.broadcast, "source", 0),
            source_segment_key=keys.segment(STREAM, self.broadcast, "source", sequence),
            width=WIDTH, height=HEIGHT, frame_rate=30.0, audio_codec="",
            rungs=tuple(r.to_dict() for r in rungs), renditions=tuple(r.name for r in rungs),
            preset="ultrafast", stored_at=time.time(),
        )  # fmt: skip
        return dataclasses.replace(j, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def media(tmp_path: Path, source_bytes: SourceBytes) -> AsyncIterator[Media]:
    m = Media(LocalStore(tmp_path / "store"), "b1", source_bytes)
    await m.store.put(keys.source_init(STREAM, m.broadcast, "source", 0), source_bytes.init)
    for seq in range(8):
        await m.add(seq)
    yield m


async def collect(
    sub: Subscription, until: Callable[[list[Message]], bool], timeout: float = 30.0
) -> list[Message]:
    """Messages from ``sub`` (acked) until ``until(messages)`` holds; fails after ``timeout``."""
    got: list[Message] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not until(got):
        left = end - loop.time()
        assert left > 0, f"timed out; got {got}"
        d: Delivery | None = await sub.next(min(left, 0.5))
        if d is not None:
            got.append(d.message)
            await d.ack()
    return got
