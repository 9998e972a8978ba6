"""The part boundary rule and the rendition part cutter (sans-I/O: frames in, parts out)."""

from __future__ import annotations

import pytest

from tidecast.media import fmp4
from tidecast.media.errors import MediaError
from tidecast.media.flv import AvcFrame
from tidecast.media.parts import RenditionCutter, SourceTimeline, boundary, part_index, part_of

START_MS = 12_021  # a segment start on the segmenter's timeline (publisher ms + 10 s)
START = START_MS * 90


def frame_ms(fps: int, n: int) -> list[int]:
    """Millisecond timestamps of ``n`` frames at ``fps`` from START_MS, as RTMP carries them."""
    return [START_MS + round(i * 1000 / fps) for i in range(n)]


def samples(ms: list[int], end_ms: int, cts_ms: list[int] | None = None) -> list[fmp4.TimedSample]:
    """Source samples in decode order: dts from ``ms``, durations up to the next (or end)."""
    cts = cts_ms or [0] * len(ms)
    out = []
    for i, t in enumerate(ms):
        nxt = ms[i + 1] if i + 1 < len(ms) else end_ms
        out.append(fmp4.TimedSample(t * 90, (nxt - t) * 90, cts[i] * 90, i == 0, b"s%d" % i))
    return out


def encoded(ms: list[int]) -> list[AvcFrame]:
    return [AvcFrame(t, t, i == 0, b"e%d" % i) for i, t in enumerate(ms)]


def test_the_boundary_rule() -> None:
    assert part_index(0.0, 0.0, 1 / 3) == 0
    assert part_index(1 / 3, 0.0, 1 / 3) == 1  # a frame on a boundary starts the next part
    assert part_index(0.3333, 0.0, 1 / 3) == 1  # within the epsilon: rounding, still on it
    assert part_index(0.332, 0.0, 1 / 3) == 0
    assert part_index(-0.01, 0.0, 1 / 3) == 0  # audio a little before the first picture
    assert part_index(12.0 + 1.999, 12.0, 1 / 3) == 5
    # 30 fps and 1/3 s: 10 pictures a part, however the milliseconds round
    ms = frame_ms(30, 60)
    assert [part_of(t * 90, START, 1 / 3) for t in ms] == [i // 10 for i in range(60)]
    # 25 fps does not divide 1/3 s: 9, 8, 8, 9, 8, 8 pictures
    counts = [0] * 6
    for t in frame_ms(25, 50):
        counts[part_of(t * 90, START, 1 / 3)] += 1
    assert counts == [9, 8, 8, 9, 8, 8]
    with pytest.raises(ValueError):
        part_index(1.0, 0.0, 0.0)


@pytest.mark.parametrize("part_target", [0.1, 0.25, 1 / 3, 0.5, 0.7, 1.0])
def test_boundary_is_the_first_tick_of_its_part(part_target: float) -> None:
    for k in range(40):
        b = boundary(k, START, part_target)
        assert part_of(b, START, part_target) == k or (k == 0 and b == START)
        assert part_of(b - 1, START, part_target) < max(k, 1)


def cut_all(cutter: RenditionCutter, frames: list[AvcFrame]) -> list[tuple[int, int, list[int]]]:
    """(frames fed when the part came out, its index, its frames' dts in ms)."""
    out = []
    for n, f in enumerate(frames, 1):
        for p in cutter.add(f):
            ts = [s.dts // 90 for s in fmp4.read_samples(p.data)[fmp4.VIDEO_TRACK]]
            out.append((n, p.index, ts))
    return out


def test_each_part_comes_out_with_its_last_frame_not_the_next_parts_first() -> None:
    ms = frame_ms(30, 60)
    end = START_MS + 2000
    tl = SourceTimeline(START, 1 / 3)
    cutter = RenditionCutter(tl, 0, sequence=7)
    out = []
    for k in range(6):  # source parts come one by one, the encoder's frames after each
        tl.add(samples(ms, end)[10 * k : 10 * k + 10])
        if k == 5:
            tl.end()
        out += [(k, n, i) for n, i, _ in cut_all(cutter, encoded(ms)[10 * k : 10 * k + 10])]
    # part k came out on its own 10th frame, while only source part k was known
    assert out == [(k, 10, k) for k in range(6)]
    assert cutter.done


def test_parts_are_cmaf_chunks_on_the_source_timeline() -> None:
    ms = frame_ms(30, 60)
    end = START_MS + 2000
    tl = SourceTimeline(START, 1 / 3)
    tl.add(samples(ms, end))
    tl.end()
    cutter = RenditionCutter(tl, 0, sequence=3)
    parts = [p for f in encoded(ms) for p in cutter.add(f)]
    assert [p.index for p in parts] == list(range(6))
    assert [p.final for p in parts] == [False] * 5 + [True]
    assert [p.independent for p in parts] == [True] + [False] * 5
    assert [p.frames for p in parts] == [10] * 6
    for p in parts:
        assert not p.data.startswith(b"\x00\x00\x00\x18styp")  # a chunk: moof + mdat
        assert [b.type for b in fmp4.iter_boxes(p.data)] == ["moof", "mdat"]
    got = fmp4.read_samples(b"".join(p.data for p in parts))[fmp4.VIDEO_TRACK]
    # every frame at its source time, each shown until the next one, the last up to the end
    assert [s.dts for s in got] == [t * 90 for t in ms]
    assert [s.cts_offset for s in got] == [0] * 60
    assert [s.dts + s.duration for s in got] == [t * 90 for t in ms[1:]] + [end * 90]
    assert [s.data for s in got] == [b"e%d" % i for i in range(60)]
    assert parts[1].start == ms[10] * 90 and parts[1].duration == (ms[20] - ms[10]) * 90


def test_a_resumed_encode_starts_at_its_first_part() -> None:
    ms = frame_ms(30, 60)
    tl = SourceTimeline(START, 1 / 3)
    tl.add(samples(ms, START_MS + 2000))
    tl.end()
    cutter = RenditionCutter(tl, 2, sequence=0)  # parts 0 and 1 were stored by another worker
    later = [AvcFrame(t, t, i == 0, b"x") for i, t in enumerate(ms[20:])]
    parts = [p for f in later for p in cutter.add(f)]
    assert [p.index for p in parts] == [2, 3, 4, 5] and parts[0].independent
    with pytest.raises(MediaError, match="before part"):
        RenditionCutter(tl, 2, sequence=0).add(AvcFrame(ms[5], ms[5], True, b"x"))


def test_a_part_waits_while_reordered_source_frames_may_still_come() -> None:
    # B-frames in the source: I0 P3 B1 B2 ... (decode order), shown 1 frame later
    fps_ms = [round(i * 1000 / 30) for i in range(24)]
    order = []
    for g in range(0, 24, 3):
        order += [g, g + 2, g + 1] if g + 2 < 24 else list(range(g, 24))
    pts = [START_MS + 33 + fps_ms[i] for i in order]
    dts = [START_MS + fps_ms[i] for i in range(24)]
    tl = SourceTimeline(START + 33 * 90, 0.25)
    src = [fmp4.TimedSample(d * 90, 33 * 90, (p - d) * 90, i == 0, b"") for i, (d, p) in enumerate(zip(dts, pts, strict=True))]
    tl.add(src[:8])  # decode order up to 0.267 s: a frame shown in part 0 may still come
    assert not tl.stable(0)
    tl.add(src[8:12])
    assert tl.stable(0)
    with pytest.raises(MediaError, match="reordered"):
        RenditionCutter(tl, 0, 0).add(AvcFrame(START_MS, START_MS + 33, True, b""))


def test_frames_that_are_no_source_frame_or_out_of_order_are_refused() -> None:
    ms = frame_ms(30, 30)
    tl = SourceTimeline(START, 1 / 3)
    tl.add(samples(ms, START_MS + 1000))
    cutter = RenditionCutter(tl, 0, 0)
    with pytest.raises(MediaError, match="no source frame"):
        cutter.add(AvcFrame(START_MS + 17, START_MS + 17, True, b""))
    cutter.add(AvcFrame(ms[1], ms[1], True, b""))
    with pytest.raises(MediaError, match="out of order"):
        cutter.add(AvcFrame(ms[0], ms[0], False, b""))


def test_an_encoder_that_stops_early_is_an_error() -> None:
    ms = frame_ms(30, 30)
    tl = SourceTimeline(START, 1 / 3)
    tl.add(samples(ms, START_MS + 1000))
    cutter = RenditionCutter(tl, 0, 0)
    for f in encoded(ms)[:15]:
        cutter.add(f)
    with pytest.raises(MediaError, match="before the end"):
        cutter.finish()
    tl.end()
    (last,) = cutter.finish()
    assert last.index == 1 and last.frames == 5 and not last.final  # frames are missing
