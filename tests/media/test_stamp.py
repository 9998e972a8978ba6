"""The clock stamp: layout and check code (sans-I/O), and read back from frames ffmpeg
drew it into, at 1080p and after the ladder's own 240p encode at a low bitrate."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import av
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidecast import ffmpeg
from tidecast.media import stamp


@given(st.integers(min_value=0, max_value=stamp.MODULUS - 1))
def test_every_value_reads_back(value: int) -> None:
    levels = [235.0 if b else 16.0 for b in stamp.bits(value)]
    assert stamp.decode_cells(levels) == value


@given(st.integers(min_value=0, max_value=stamp.MODULUS - 1), st.data())
def test_up_to_three_flipped_cells_are_refused(value: int, data: st.DataObject) -> None:
    cells = stamp.bits(value)
    n = data.draw(st.integers(min_value=1, max_value=3))
    flipped = data.draw(st.lists(st.integers(min_value=2, max_value=stamp.CELLS - 1), min_size=n,
                                 max_size=n, unique=True))  # fmt: skip
    for i in flipped:
        cells[i] ^= 1
    assert stamp.decode_cells([235.0 if b else 16.0 for b in cells]) is None


def test_every_single_and_double_error_is_caught_for_one_value() -> None:
    good = stamp.bits(0x2ABCDEF1 % stamp.MODULUS)
    for pair in itertools.combinations(range(2, stamp.CELLS), 2):
        for flips in ((pair[0],), pair):
            cells = list(good)
            for i in flips:
                cells[i] ^= 1
            assert stamp.decode_cells([200.0 if b else 30.0 for b in cells]) is None


def test_no_stamp_ambiguous_cells_and_swapped_references_are_refused() -> None:
    assert stamp.decode_cells([128.0] * stamp.CELLS) is None  # a flat picture
    assert stamp.decode_cells([16.0] * stamp.CELLS) is None  # black: no contrast
    levels = [235.0 if b else 16.0 for b in stamp.bits(777)]
    assert stamp.decode_cells(levels[:-1]) is None
    assert stamp.decode_cells([levels[1], levels[0], *levels[2:]]) is None  # upside-down refs
    blurred = list(levels)
    blurred[7] = (235 + 16) / 2 + 10  # a cell that is neither
    assert stamp.decode_cells(blurred) is None


def test_a_plane_decodes_and_a_corrupted_plane_does_not() -> None:
    w, h = 640, 360
    plane = bytearray(stamp.render_luma(5_000_123, w, h))
    assert stamp.decode_luma(plane, w, h) == 5_000_123
    x, y, cw, ch = stamp.cell_box(20, w, h)  # paint one value cell the other colour
    colour = 235 if plane[y * w + x + cw // 2] < 128 else 16
    for row in range(y, y + ch):
        plane[row * w + x : row * w + x + cw] = bytes([colour]) * cw
    assert stamp.decode_luma(plane, w, h) is None
    with pytest.raises(ValueError):
        stamp.decode_luma(b"\0" * 10, 30, 2)


def test_check_bits_are_the_parity_terms_ffmpeg_evaluates() -> None:
    terms = stamp.bit_terms()
    assert len(terms) == stamp.CELLS
    for value in (0, 1, 12345, stamp.MODULUS - 1, 0x15555555):
        parity = [(c + sum((value >> k) & 1 for k in ks)) % 2 for c, ks in terms]
        assert parity == stamp.bits(value)


def test_nearest_undoes_the_wrap() -> None:
    now = 1_760_000_000_123
    assert stamp.nearest((now - 900) % stamp.MODULUS, now) == now - 900
    assert stamp.nearest((now + 50) % stamp.MODULUS, now) == now + 50
    wrap = (now // stamp.MODULUS + 1) * stamp.MODULUS  # just past a wrap of the modulus
    assert stamp.nearest((wrap - 10) % stamp.MODULUS, wrap + 5) == wrap - 10


def test_the_stamp_filter_draws_only_cells_that_can_be_white() -> None:
    vf = ffmpeg.stamp_filter(1920, 1080, "media", 30)
    boxes = vf.split(",drawbox=")
    assert boxes[0] == "drawbox=x=0:y=0:w=1920:h=68:color=black:t=fill"
    assert boxes[1] == "x=0:y=0:w=48:h=68:color=white:t=fill"  # the white reference, always on
    assert len(boxes) == 1 + stamp.CELLS - 1  # every cell but the black reference
    assert boxes[2].startswith(
        "x=96:y=0:w=48:h=68:color=white:t=fill:enable='st(0,mod(floor(t*1000+0.5),"
    )
    wall = ffmpeg.stamp_filter(640, 360, "wall", 25)
    assert wall.startswith("settb=1/1000,setpts=floor(RTCTIME/1000),drawbox=")
    assert wall.endswith(",settb=1/25,setpts=N")


def frame_stamps(path: Path) -> list[tuple[int, int | None]]:
    """(presentation time in ms, decoded stamp) of every frame."""
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            y = frame.planes[0]
            assert frame.time is not None
            out.append((round(frame.time * 1000), stamp.decode_luma(bytes(y), frame.width, frame.height,
                                                                    y.line_size)))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def stamped_1080p(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stamp") / "stamped-1080p.mp4"
    p = ffmpeg.TestPattern(width=1920, height=1080, fps=30, duration=2, stamp="media", preset="ultrafast",
                           font=ffmpeg.clock_font())  # fmt: skip
    subprocess.run(ffmpeg.render_test_pattern_args(p, str(path), ffmpeg.ffmpeg_exe(), zerolatency=True),
                   check=True, timeout=120)  # fmt: skip
    return path


def test_ffmpeg_stamps_each_frame_with_its_media_time(stamped_1080p: Path) -> None:
    got = frame_stamps(stamped_1080p)
    assert len(got) == 60
    assert [s for _, s in got] == [pts for pts, _ in got]


def test_the_stamp_survives_the_240p_rung_at_a_low_bitrate(
    stamped_1080p: Path, tmp_path: Path
) -> None:
    out = tmp_path / "240p.mp4"
    rung = ffmpeg.RungOutput(426, 240, 250, "baseline", str(out))  # below the ladder's 400k
    subprocess.run(ffmpeg.transcode_segment_args(str(stamped_1080p), [rung], "veryfast",
                                                 exe=ffmpeg.ffmpeg_exe()), check=True, timeout=120)  # fmt: skip
    got = frame_stamps(out)
    assert len(got) == 60
    assert [s for _, s in got] == [round(i * 1000 / 30) for i in range(60)]


def test_a_live_pattern_carries_the_wall_clock(tmp_path: Path) -> None:
    import time

    out = tmp_path / "wall.mp4"
    p = ffmpeg.TestPattern(width=640, height=360, fps=30, duration=1, stamp="wall", clock=False,
                           preset="ultrafast")  # fmt: skip
    before = int(time.time() * 1000)
    subprocess.run(ffmpeg.render_test_pattern_args(p, str(out), ffmpeg.ffmpeg_exe(), zerolatency=True),
                   check=True, timeout=60)  # fmt: skip
    after = int(time.time() * 1000)
    got = frame_stamps(out)
    assert len(got) == 30 and all(s is not None for _, s in got)
    times = [stamp.nearest(s, before) for _, s in got if s is not None]
    assert before <= times[0] and times[-1] <= after
    assert times == sorted(times)  # drawn as made: rendered faster than real time, in order
    assert [pts for pts, _ in got] == [
        round(i * 1000 / 30) for i in range(30)
    ]  # timestamps restored


def test_publish_stamp_goes_under_the_human_clock() -> None:
    p = ffmpeg.TestPattern(width=640, height=360, fps=25, duration=5, stamp="wall", font="/f.ttf")
    args = ffmpeg.publish_test_pattern_args(p, "rtmp://h/live/k", "ff")
    vf = args[args.index("-vf") + 1]
    assert vf.startswith(ffmpeg.stamp_filter(640, 360, "wall", 25) + ",drawtext=fontfile=/f.ttf:")
