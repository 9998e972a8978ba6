"""Chat bans, timeouts and revoked tokens in the database (SQLite and PostgreSQL)."""

from __future__ import annotations

from tidecast.db.chat import ChatSanctions, Sanction
from tidecast.db.repo import Database


def test_sanctions_by_identity_and_address(db_url: str) -> None:
    db = Database(db_url)
    try:
        s = ChatSanctions(db)
        s.add([Sanction("room", "ban", "bob", None, None, "mod"), Sanction("room", "ban", "bob", "10.0.0.7")], 100.0)
        s.add([Sanction("room", "timeout", "eve", "10.0.0.8", 160.0, "mod")], 100.0)
        s.add([Sanction("other", "ban", "carol")], 100.0)
        assert {(x.kind, x.identity, x.ip, x.until) for x in s.active("room", 150.0)} == {
            ("ban", "bob", None, None), ("ban", "bob", "10.0.0.7", None), ("timeout", "eve", "10.0.0.8", 160.0)}  # fmt: skip
        assert [x.identity for x in s.active("room", 170.0)] == ["bob", "bob"]  # the timeout ran out
        assert s.lift("room", "bob") == 2
        assert s.active("room", 170.0) == []
        assert [x.identity for x in s.active("other", 170.0)] == ["carol"]

        assert not s.token_revoked("ct_1", 100.0)
        s.revoke_token("ct_1", 200.0)
        s.revoke_token("ct_1", 200.0)  # twice is once
        assert s.token_revoked("ct_1", 150.0) and not s.token_revoked("ct_2", 150.0)
        assert not s.token_revoked("ct_1", 250.0)  # kept until it would have expired anyway
    finally:
        db.close()
