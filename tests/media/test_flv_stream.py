"""The FLV stream reader: an encoder's FLV output, fed in pieces of any size."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import av
import pytest

from tidecast.media.errors import MediaError
from tidecast.media.flv import AvcConfig, AvcFrame, FlvReader
from tidecast.media.h264 import parse_avcc


@pytest.fixture(scope="module")
def flv(tmp_path_factory: pytest.TempPathFactory, ffmpeg_exe: str) -> Path:
    path = tmp_path_factory.mktemp("flv") / "a.flv"
    subprocess.run(
        [ffmpeg_exe, "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=25:duration=1",
         "-f", "lavfi", "-i", "sine=duration=1", "-c:v", "libx264", "-preset", "ultrafast",
         "-c:a", "aac", str(path)],
        check=True, timeout=60,
    )  # fmt: skip
    return path


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reads_every_picture_in_pieces_of_any_size(flv: Path, seed: int) -> None:
    data = flv.read_bytes()
    rng = random.Random(seed)
    reader = FlvReader()
    events: list[AvcConfig | AvcFrame] = []
    pos = 0
    while pos < len(data):
        n = rng.choice([1, 7, 100, 4096, 65536])
        events += reader.feed(data[pos : pos + n])
        pos += n
    reader.end()
    config, frames = events[0], events[1:]
    assert isinstance(config, AvcConfig) and parse_avcc(config.avcc).width == 160
    assert all(isinstance(f, AvcFrame) for f in frames)
    with av.open(str(flv)) as c:
        want = [(p.dts, p.pts, p.is_keyframe, bytes(p)) for p in c.demux(c.streams.video[0]) if p.size]
    assert [(f.dts, f.pts, f.keyframe, f.data) for f in frames if isinstance(f, AvcFrame)] == want


def test_bad_streams_raise_media_error(flv: Path) -> None:
    with pytest.raises(MediaError, match="not an FLV"):
        FlvReader().feed(b"RIFF" + bytes(20))
    reader = FlvReader()
    reader.feed(flv.read_bytes()[:5000])
    with pytest.raises(MediaError, match="inside a tag"):
        reader.end()
