"""Segmenter with LL-HLS parts: the job goes out at a segment's first frame, parts are
stored and announced as they complete, and they hold exactly the segment's media."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.segmenter.test_core import A, V, feed
from tests.segmenter.test_service import drain, publish

from tidecast import keys
from tidecast.bus.memory import MemoryBus
from tidecast.media import fmp4
from tidecast.media.frames import MediaFrame, TrackKind
from tidecast.messages import PartReady, SegmentReady, TranscodeJob, part_wakeup_subject
from tidecast.segmenter.core import (
    SegmentAborted,
    Segmenter,
    SegmentLimitError,
    SegmentStarted,
    SourcePart,
    SourceSegment,
)
from tidecast.segmenter.service import SegmenterService
from tidecast.store.local import LocalStore
from tidecast.transcode.ladder import DEFAULT_LADDER, Ladder

PART = 1 / 3


@pytest.mark.parametrize("fps", [24, 25, 30, 60])
@pytest.mark.parametrize("audio", [True, False])
def test_parts_hold_exactly_the_segment_and_follow_the_boundary_rule(fps: int, audio: bool) -> None:
    seg = Segmenter(target=2.0, part_target=PART)
    seg.set_video_config(V)
    if audio:
        seg.set_audio_config(A)
    out = feed(seg, 10.0, fps=fps) + seg.flush()
    events = seg.take_events()
    assert [e.sequence for e in events if isinstance(e, SourceSegment)] == [s.sequence for s in out]
    for s in out:
        mine = [e for e in events if getattr(e, "sequence", None) == s.sequence]
        assert isinstance(mine[0], SegmentStarted) and isinstance(mine[-1], SourceSegment)
        parts = [e for e in mine if isinstance(e, SourcePart)]
        assert [p.index for p in parts] == list(range(len(parts))) == list(range(6))
        assert [p.final for p in parts] == [False] * 5 + [True]
        assert [x for p in parts for x in p.video] == s.video
        assert [x for p in parts for x in p.audio] == s.audio
        start_pts = mine[0].start_pts
        assert start_pts == s.video[0].dts + s.video[0].cts_offset
        for p in parts:  # every picture is in the part the rule names
            for v in p.video:
                assert int((v.dts + v.cts_offset - start_pts) / (PART * 90000) + 1e-3) == p.index
            assert p.video[0].keyframe == (p.index == 0)
        if audio:  # audio by the same rule, except what the segment's last part gathers
            for p in parts[:-1]:
                for x in p.audio:
                    assert int((x.dts * 90000 // 48000 - start_pts) / (PART * 90000) + 1e-3) <= p.index


def test_a_part_waits_for_audio_but_not_for_ever() -> None:
    seg = Segmenter(target=2.0, part_target=PART)
    seg.set_video_config(V)
    seg.set_audio_config(A)
    # 4/3 s of video (parts 0..3), audio only for the first 0.1 s
    for i in range(40):
        ts = round(i * 1000 / 30)
        seg.push(MediaFrame(TrackKind.VIDEO, ts, ts, b"v", i == 0))
        if i < 3:
            seg.push(MediaFrame(TrackKind.AUDIO, ts, ts, b"a", True))
    parts = [e for e in seg.take_events() if isinstance(e, SourcePart)]
    # each part waited for audio past it, then was cut once video was a whole part further
    assert [p.index for p in parts] == [0, 1]
    assert len(parts[0].audio) == 3 and not parts[1].audio


def test_a_segment_that_breaks_a_limit_after_it_started_is_aborted() -> None:
    seg = Segmenter(target=2.0, part_target=PART, max_duration=4.0)
    seg.set_video_config(V)
    with pytest.raises(SegmentLimitError):
        for i in range(200):
            ts = round(i * 1000 / 30)
            seg.push(MediaFrame(TrackKind.VIDEO, ts, ts, b"v", i == 0))
    events = seg.take_events()
    assert isinstance(events[0], SegmentStarted) and isinstance(events[-1], SegmentAborted)
    assert not any(isinstance(e, SourceSegment) for e in events)


def test_parts_cannot_be_longer_than_half_a_segment() -> None:
    with pytest.raises(ValueError, match="part target"):
        Segmenter(target=2.0, part_target=1.5)


async def test_the_job_goes_out_at_the_first_frame_and_parts_are_announced(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    bus = MemoryBus()
    seen = bus.subscribe("segment.>")
    jobs = bus.subscribe("job.>")
    wakes = bus.subscribe(part_wakeup_subject("s"))
    order = bus.subscribe(">")
    svc = SegmenterService(store, bus, 2.0, Ladder(DEFAULT_LADDER), part_target=PART)
    sink = svc.open("s", "b1", 0.0)
    await publish(sink, 4.5)
    messages = await drain(seen)
    job_list = [m for m in (await drain(jobs)) if isinstance(m, TranscodeJob)]
    assert [j.sequence for j in job_list] == [0, 1, 2]
    assert all(j.part_target == PART and j.duration == 0.0 for j in job_list)
    # the job of each segment went out before the segment's first part was announced
    everything = [m for m in await drain(order)]
    for j in job_list:
        job_at = everything.index(j)
        first = next(i for i, m in enumerate(everything) if isinstance(m, PartReady)
                     and m.sequence == j.sequence and m.rendition == "source")  # fmt: skip
        assert job_at < first
    for rendition in ("source", "audio"):
        for seq in (0, 1):
            parts = [m for m in messages if isinstance(m, PartReady) and m.rendition == rendition
                     and m.sequence == seq]  # fmt: skip
            assert [p.index for p in parts] == list(range(6)), (rendition, seq)
            assert [p.final for p in parts] == [False] * 5 + [True]
            seg_at = next(i for i, m in enumerate(messages) if isinstance(m, SegmentReady)
                          and m.rendition == rendition and m.sequence == seq)  # fmt: skip
            assert all(messages.index(p) < seg_at for p in parts)  # parts first, then the segment
            whole = await store.get(keys.segment("s", "b1", rendition, seq))
            chunks = [await store.get(p.key) for p in parts]
            assert [p.size for p in parts] == [len(c) for c in chunks]
            got, want = fmp4.read_samples(b"".join(chunks)), fmp4.read_samples(whole)
            assert got == want and got  # the parts are the segment, sample for sample
            assert parts[0].independent
            if rendition == "source":
                assert [p.independent for p in parts[1:]] == [False] * 5
    woken = [m for m in await drain(wakes) if isinstance(m, PartReady)]
    assert {m.rendition for m in woken} == {"source"} and len(woken) >= 12



async def test_source_parts_say_whether_the_source_is_listed(tmp_path: Path) -> None:
    for passthrough in (True, False):
        bus = MemoryBus()
        seen = bus.subscribe("segment.>")
        svc = SegmenterService(LocalStore(tmp_path / str(passthrough)), bus, 2.0,
                               Ladder(DEFAULT_LADDER, passthrough=passthrough), part_target=PART)  # fmt: skip
        sink = svc.open("s", "b1", 0.0)
        await publish(sink, 2.5)
        parts = [m for m in await drain(seen) if isinstance(m, PartReady)]
        source = [p.listed for p in parts if p.rendition == "source"]
        assert source and set(source) == {passthrough}
        assert not any(p.listed for p in parts if p.rendition != "source")
        await svc.aclose()


async def test_a_stream_on_whole_segments_gets_no_parts_on_a_low_latency_node(tmp_path: Path) -> None:
    bus = MemoryBus()
    seen, jobs = bus.subscribe("segment.>"), bus.subscribe("job.>")
    svc = SegmenterService(LocalStore(tmp_path), bus, 2.0, Ladder(DEFAULT_LADDER), part_target=PART)
    sink = svc.open("s", "b1", 0.0, low_latency=False)
    await publish(sink, 4.5)
    messages = await drain(seen)
    assert not any(isinstance(m, PartReady) for m in messages)
    assert {m.sequence for m in messages if isinstance(m, SegmentReady)} == {0, 1, 2}
    job_list = [m for m in await drain(jobs) if isinstance(m, TranscodeJob)]
    assert job_list and all(j.part_target == 0 and j.duration > 0 for j in job_list)  # whole-segment jobs
    await svc.aclose()
