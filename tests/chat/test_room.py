"""The room rules without any I/O."""

from __future__ import annotations

import pytest

from tidecast.chat.protocol import ChatError, parse_client_frame
from tidecast.chat.room import ChatLimits, Room
from tidecast.chat.tokens import BadToken, ChatClaims, issue, verify


def code(exc: pytest.ExceptionInfo[ChatError]) -> str:
    return exc.value.code


def test_join_names_and_history() -> None:
    r = Room("s", ChatLimits(history=3))
    out = r.join(1, "Ann", "viewer", "1.1.1.1")
    assert out.reply[0]["type"] == "welcome" and out.room == [{"type": "join", "user": "Ann"}]
    with pytest.raises(ChatError) as e:
        r.join(2, "ann", "viewer", "1.1.1.2")
    assert code(e) == "name_taken"
    with pytest.raises(ChatError) as e:
        r.join(3, "bad\x00name", "viewer", "1.1.1.3")
    assert code(e) == "bad_name"
    for i in range(5):
        r.apply({"type": "message", "id": f"m{i}", "user": "Ann", "role": "viewer", "text": str(i), "ts": i})
    assert [h["id"] for h in r.history] == ["m2", "m3", "m4"]
    r.apply({"type": "delete", "id": "m3"})
    assert [h["id"] for h in r.history] == ["m2", "m4"]
    assert r.join(4, "Bob", "viewer", "1.1.1.4").reply[0]["history"] == list(r.history)


def test_rate_limits_slow_mode_and_blocked_words() -> None:
    r = Room("s", ChatLimits(per_connection_burst=2, per_connection_rate=1, per_ip_burst=3, per_ip_rate=0.1,
                             blocked_words=("spoiler",)))  # fmt: skip
    r.join(1, "a", "viewer", "ip1")
    r.join(2, "b", "viewer", "ip1")
    r.message(1, "one", 0.0)
    r.message(1, "two", 0.1)
    with pytest.raises(ChatError) as e:
        r.message(1, "three", 0.2)
    assert code(e) == "rate_limited"
    r.message(2, "b one", 0.3)  # the shared address: 3 tokens in all
    with pytest.raises(ChatError) as e:
        r.message(2, "b two", 0.4)
    assert code(e) == "rate_limited" and "network" in e.value.message
    with pytest.raises(ChatError) as e:
        r.message(1, "big SPOILER here", 100.0)
    assert code(e) == "blocked_word"
    r.apply({"type": "slow", "seconds": 10})
    r.message(1, "ok", 200.0)
    with pytest.raises(ChatError) as e:
        r.message(1, "too soon", 205.0)
    assert code(e) == "slow_mode"


def test_moderation_permissions() -> None:
    r = Room("s")
    r.join(1, "viewer", "viewer", "a")
    r.join(2, "mod", "moderator", "b")
    r.join(3, "host", "streamer", "c")
    with pytest.raises(ChatError) as e:
        r.moderate(1, "ban", {"user": "mod"}, 0)
    assert code(e) == "forbidden"
    with pytest.raises(ChatError) as e:
        r.moderate(2, "ban", {"user": "host"}, 0)
    assert code(e) == "forbidden"
    out = r.moderate(2, "ban", {"user": "VIEWER"}, 0)
    assert out.close == [1] and out.log
    r.apply(out.room[0])
    r.leave(1)
    with pytest.raises(ChatError) as e:
        r.join(4, "viewer", "viewer", "z")
    assert code(e) == "banned"
    out = r.moderate(3, "timeout", {"user": "mod", "seconds": 30}, 100.0)  # the streamer outranks mods
    r.apply(out.room[0])
    with pytest.raises(ChatError) as e:
        r.message(2, "hi", 110.0)
    assert code(e) == "timed_out"
    r.message(2, "hi", 131.0)


@pytest.mark.parametrize("frame", ["", "[]", '{"type": "exec"}', "nope", b"\x00binary", "x" * 5000])
def test_bad_frames(frame: str | bytes) -> None:
    with pytest.raises(ChatError):
        parse_client_frame(frame)


def test_tokens() -> None:
    secret = b"k" * 32
    tok = issue(secret, ChatClaims("s", "mod", "moderator", 2e9))
    assert verify(secret, tok, "s", now=1e9).role == "moderator"
    for bad, stream, now in ((tok, "other", 1e9), (tok, "s", 3e9), (tok[:-2] + "xx", "s", 1e9),
                             (issue(b"x" * 32, ChatClaims("s", "mod", "streamer", 2e9)), "s", 1e9)):  # fmt: skip
        with pytest.raises(BadToken):
            verify(secret, bad, stream, now=now)


def test_bans_and_timeouts_hold_by_address_too() -> None:
    r = Room("s")
    r.load([("ban", "bob", "10.0.0.7", None), ("timeout", "eve", "10.0.0.8", 100.0),
            ("ban", "mallory", None, None)])  # fmt: skip
    for name, ip in (("bob", "10.0.0.1"), ("someone", "10.0.0.7"), ("Mallory", "10.0.0.2")):
        with pytest.raises(ChatError) as e:
            r.join(9, name, "viewer", ip)
        assert code(e) == "banned"
    assert r.address_banned("10.0.0.7") and not r.address_banned("10.0.0.1")
    r.join(1, "fresh", "viewer", "10.0.0.8")  # a timeout lets one in, but not speak
    with pytest.raises(ChatError) as e:
        r.message(1, "hi", 50.0)
    assert code(e) == "timed_out"
    assert r.message(1, "hi", 101.0).room[0]["text"] == "hi"
    r.load([])  # lifted in the database: lifted here
    r.join(2, "bob", "viewer", "10.0.0.7")
    assert r.members_of("bob")[0].ip == "10.0.0.7"


def test_token_ids() -> None:
    from tidecast.chat.tokens import new_token_id

    secret = b"k" * 32
    tid = new_token_id()
    tok = issue(secret, ChatClaims("s", "mod", "moderator", 2e9, tid))
    assert verify(secret, tok, "s", now=1e9).id == tid
    assert verify(secret, issue(secret, ChatClaims("s", "m", "moderator", 2e9)), "s", now=1e9).id.startswith("ct_")
