from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tidecast.db.recordings import ClipError, Recordings, Retention, SegmentRow
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
