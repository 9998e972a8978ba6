"""End-to-end fixtures: test sources rendered once per test session and shared."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tidecast import ffmpeg

Clips = Callable[..., Path]


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    """``clips(width, height, fps, seconds)``: an H.264/AAC FLV of the test pattern with a
    2 s GOP, rendered once (quickly: ultrafast) and shared by every test of the session.
    Published with ``-c copy`` it costs the publisher no CPU, so the machine's cores go to
    what is tested."""
    root = tmp_path_factory.mktemp("clips")

    def get(width: int, height: int, fps: int = 30, seconds: float = 10, bitrate_k: int = 5000) -> Path:
        path = root / f"{width}x{height}p{fps}-{seconds:g}s-{bitrate_k}k.flv"
        if not path.exists():
            p = ffmpeg.TestPattern(width=width, height=height, fps=fps, duration=seconds, clock=False,
                                   video_bitrate_k=bitrate_k, preset="ultrafast")  # fmt: skip
            tmp = path.with_suffix(".part.flv")
            subprocess.run(ffmpeg.render_test_pattern_args(p, str(tmp), ffmpeg.ffmpeg_exe()), check=True,
                           timeout=300)  # fmt: skip
            tmp.rename(path)
        return path

    return get
