from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tidecast.db.recordings import (
    BroadcastLive,
    BroadcastNotFound,
    ClipError,
    Recordings,
    Retention,
    SegmentRow,
)
from tidecast.db.repo import Database


def seg(rendition: str, seq: int, pdt: float, height: int = 360) -> SegmentRow:
    return SegmentRow(rendition, seq, 0, 10.0 + 2 * seq, 2.0, f"k/{rendition}/init.mp4",
                      f"k/{rendition}/{seq:06d}.m4s", 1000, False, "avc1.4d401e", 640, height, 30.0, pdt)  # fmt: skip


@pytest.fixture
def rec(db_url: str) -> Iterator[Recordings]:
    db = Database(db_url)
    db.create_stream("s")
    yield Recordings(db)
    db.close()


def test_finish_computes_duration_size_and_renditions(rec: Recordings) -> None:
    rec.start(1, "b1", datetime.now(UTC), "Show", True)
    for i in range(5):
        rec.record_segment("b1", seg("360p", i, 100.0 + 2 * i))
        rec.record_segment("b1", seg("240p", i, 100.0 + 2 * i, 240))
    rec.record_segment("b1", seg("360p", 0, 100.0))  # a duplicate delivery is ignored
    info = rec.finish("b1", datetime.now(UTC), "ended")
    assert info.duration == 10.0 and info.size == 10_000 and info.renditions == ("240p", "360p")
    assert info.vod_ready and rec.open_broadcasts() == []


def test_clips_cover_whole_segments(rec: Recordings) -> None:
    rec.start(1, "b1", datetime.now(UTC), "Show", True)
    for i in range(10):
        rec.record_segment("b1", seg("360p", i, 100.0 + 2 * i))
    clip = rec.create_clip("b1", 3.0, 7.0, "")
    assert (clip.first_sequence, clip.last_sequence, clip.duration) == (1, 3, 6.0)
    with pytest.raises(ClipError):
        rec.create_clip("b1", 50, 60, "")
    with pytest.raises(ClipError):
        rec.create_clip("b1", 5, 5, "")


def test_retention_days_and_count(rec: Recordings) -> None:
    now = datetime.now(UTC)
    for i, age in enumerate((1, 5, 10)):
        rec.start(1, f"b{i}", now - timedelta(days=age, hours=1), "x", True)
        rec.finish(f"b{i}", now - timedelta(days=age), "ended")
    rec.start(1, "live", now, "x", True)  # not ended: never expired
    assert rec.expired(now) == []  # keep forever by default
    rec.set_retention("s", Retention(True, "days", 7))
    assert [b.id for b in rec.expired(now)] == ["b2"]
    rec.set_retention("s", Retention(True, "count", 1))
    assert sorted(b.id for b in rec.expired(now)) == ["b1", "b2"]
    with pytest.raises(ValueError):
        rec.set_retention("s", Retention(True, "count", 0))


def test_chat_log(db_url: str) -> None:
    from tidecast.db.chat import ChatLog, StoredMessage

    db = Database(db_url)
    log = ChatLog(db)
    log.add(
        [
            StoredMessage(f"m{i}", "s", "b1", float(i), "ann", "viewer", f"hi {i}", 100.0 + i)
            for i in range(3)
        ]
    )
    log.add([StoredMessage("x", "s", None, None, "bob", "viewer", "between broadcasts", 99.0)])
    log.delete("m1")
    assert [m.text for m in log.for_broadcast("b1")] == ["hi 0", "hi 2"]
    db.close()


def gap(rendition: str, seq: int, pdt: float, height: int = 360) -> SegmentRow:
    return SegmentRow(rendition, seq, 0, 10.0 + 2 * seq, 2.0, "", "", 0, True, "", 0, 0, 0.0, pdt)


def test_heal_turns_a_gap_into_the_real_segment_and_never_back(rec: Recordings) -> None:
    rec.start(1, "b1", datetime.now(UTC), "Show", True)
    rec.record_segment("b1", seg("360p", 0, 100.0))
    rec.record_segment("b1", gap("360p", 1, 102.0))
    assert rec.recorded_state("b1") == {("360p", 0): False, ("360p", 1): True}
    assert rec.recorded_keys("b1") == {("360p", 0), ("360p", 1)}

    real = seg("360p", 1, 102.0)
    assert rec.heal_segment("b1", real)  # the gap gets its real row
    [row] = [r for r in rec.segments("b1") if r.sequence == 1]
    assert row == SegmentRow(**{**{f: getattr(real, f) for f in SegmentRow.__dataclass_fields__},
                                "healed": True})  # fmt: skip
    assert not rec.heal_segment("b1", real)  # twice: nothing more to do
    rec.record_segment("b1", gap("360p", 1, 102.0))  # a late or repeated gap cannot un-heal
    assert rec.recorded_state("b1")[("360p", 1)] is False
    assert not rec.heal_segment("b1", seg("360p", 0, 100.0))  # never a gap: kept as it was
    assert [r.healed for r in rec.segments("b1")] == [False, True]

    assert rec.heal_segment("b1", seg("240p", 0, 100.0, 240))  # never recorded at all
    assert rec.healed_segments("b1") == [("240p", 0), ("360p", 1)]
    with pytest.raises(ValueError):
        rec.heal_segment("b1", gap("360p", 2, 104.0))  # healing needs a real segment
    with pytest.raises(BroadcastNotFound):
        rec.heal_segment("nope", real)
    with pytest.raises(BroadcastNotFound):
        rec.record_segment("nope", real)


def test_counts_of_gaps_and_heals_before_and_after_the_end(rec: Recordings) -> None:
    rec.start(1, "b1", datetime.now(UTC), "Show", True)
    for i in range(4):
        rec.record_segment(
            "b1", gap("720p", i, 100.0 + 2 * i) if i % 2 else seg("720p", i, 100.0 + 2 * i, 720)
        )
    rec.heal_segment("b1", seg("720p", 1, 102.0, 720))
    live = rec.get("b1")
    assert (live.gaps, live.healed, live.size) == (1, 1, 3000)
    info = rec.finish("b1", datetime.now(UTC), "ended")
    assert (info.gaps, info.healed, info.size, info.duration) == (1, 1, 3000, 8.0)
    # healed after the end (the VOD heals in the background): the stored numbers follow
    assert rec.heal_segment("b1", seg("720p", 3, 106.0, 720))
    after = rec.get("b1")
    assert (after.gaps, after.healed, after.size) == (0, 2, 4000)
    assert [b.healed for b in rec.broadcasts("s")] == [2]
    assert rec.healed_segments("b1") == [("720p", 1), ("720p", 3)]


def test_live_broadcasts_report_what_is_recorded_so_far(rec: Recordings) -> None:
    from sqlalchemy import event

    now = datetime.now(UTC)
    rec.start(1, "old", now - timedelta(hours=1), "Old", True)
    rec.record_segment("old", seg("360p", 0, 10.0))
    rec.finish("old", now - timedelta(minutes=30), "ended")
    rec.start(1, "b1", now, "Show", True)
    assert rec.get("b1").duration == 0.0 and rec.get("b1").renditions == ()
    for i in range(3):
        rec.record_segment("b1", seg("720p", i, 100.0 + 2 * i, 720))
        rec.record_segment("b1", seg("360p", i, 100.0 + 2 * i))
    rec.record_segment("b1", seg("720p", 3, 106.0, 720))
    rec.record_segment("b1", seg("audio", 0, 100.0, 0))
    info = rec.get("b1")
    assert info.ended_at is None
    assert (info.duration, info.size, info.renditions) == (8.0, 8000, ("360p", "720p", "audio"))
    listed = {b.id: b for b in rec.broadcasts()}
    assert listed["b1"] == info
    assert (listed["old"].duration, listed["old"].size) == (2.0, 1000)  # finished: as stored
    rec.end("b1", datetime.now(UTC), "unpublished")  # ended, not finished yet: still counted
    assert rec.get("b1").size == 8000

    # one aggregate query for all open broadcasts, not one per broadcast
    statements: list[str] = []
    event.listen(rec.db.engine, "before_cursor_execute",
                 lambda _c, _cur, stmt, *_a: statements.append(stmt))  # fmt: skip
    rec.broadcasts()
    one = len(statements)
    for n in range(5):
        rec.start(1, f"more{n}", now + timedelta(seconds=n + 1), "More", True)
        rec.record_segment(f"more{n}", seg("360p", 0, 100.0))
    statements.clear()
    assert {b.id: b.size for b in rec.broadcasts()}[f"more{n}"] == 1000
    assert len(statements) == one


def test_delete_refuses_a_live_broadcast(rec: Recordings) -> None:
    rec.start(1, "b1", datetime.now(UTC), "Show", True)
    rec.record_segment("b1", seg("360p", 0, 100.0))
    with pytest.raises(BroadcastLive):
        rec.delete("b1")
    assert rec.get("b1").size == 1000 and len(rec.segments("b1")) == 1  # nothing deleted
    rec.end("b1", datetime.now(UTC), "unpublished")
    rec.delete("b1")
    with pytest.raises(BroadcastNotFound):
        rec.get("b1")
    assert rec.segments("b1") == []
    rec.delete("b1")  # already gone: nothing to do
