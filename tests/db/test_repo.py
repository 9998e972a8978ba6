from __future__ import annotations

import pytest

from tidecast.db.repo import Database, InvalidName, NameTaken, StreamNotFound


def test_streams_and_keys(db_url: str) -> None:
    db = Database(db_url)
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
    from sqlalchemy import text

    with db.engine.connect() as c:
        stored = [r[0] for r in c.execute(text("select key_hash from streams"))]
    assert rotated not in stored and len(stored[0]) == 64
    db.close()
