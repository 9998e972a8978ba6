"""Playback policies and broadcast key seeds, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tidecast.db.playback import Playback
from tidecast.db.recordings import BroadcastNotFound, Recordings
from tidecast.db.repo import Database, StreamNotFound


def test_policy_defaults_changes_and_seeds(db_url: str) -> None:
    db = Database(db_url)
    try:
        info = db.create_stream("s").stream
        pb, rec = Playback(db), Recordings(db)
        p = pb.policy("s")
        assert (p.access, p.password_hash, p.encryption) == ("public", "", "none")
        with pytest.raises(ValueError, match="needs a password"):
            pb.set_policy("s", access="password")
        assert pb.policy("s").access == "public"  # refused whole
        with pytest.raises(ValueError, match="access must be"):
            pb.set_policy("s", access="secret")
        p = pb.set_policy("s", access="password", password_hash="scrypt$x", encryption="aes-128")
        assert (p.access, p.encryption) == ("password", "aes-128") and pb.policy("s") == p
        with pytest.raises(StreamNotFound):
            pb.policy("nope")
        now = datetime.now(UTC)
        rec.start(info.id, "b-enc", now, "t", True)
        pb.set_policy("s", encryption="none")
        rec.start(info.id, "b-clear", now, "t", True)
        enc, clear = pb.broadcast_keys("b-enc"), pb.broadcast_keys("b-clear")
        assert enc.stream == "s" and len(enc.seed) == 32 and clear.seed == ""
        assert pb.broadcast_keys("b-enc") == enc  # kept: the VOD keeps its keys
        with pytest.raises(BroadcastNotFound):
            pb.broadcast_keys("b-none")
    finally:
        db.close()
