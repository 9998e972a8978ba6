from __future__ import annotations

from pathlib import Path

import pytest

from tidecast.db.repo import Database, InvalidName, NameTaken, StreamNotFound


def test_streams_and_keys(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    new = db.create_stream("main", "Main")
    assert new.key.startswith("sk_") and len(new.key) > 30
    assert db.stream_for_key(new.key) == new.stream
    assert db.stream_for_key("sk_wrong") is None
    with pytest.raises(NameTaken):
        db.create_stream("main")
    for bad in ("", "Main", "a b", "../x", "-x", "x" * 64):
        with pytest.raises(InvalidName):
            db.create_stream(bad)
    rotated = db.rotate_key("main")
    assert db.stream_for_key(new.key) is None
    assert db.stream_for_key(rotated) is not None
    with pytest.raises(StreamNotFound):
        db.rotate_key("nope")
    assert [s.name for s in db.list_streams()] == ["main"]
    # only the hash is stored
    raw = (tmp_path / "db.sqlite").read_bytes()
    assert rotated.encode() not in raw
