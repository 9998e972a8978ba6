"""Playback tokens (nginx secure_link's MD5 form), where they travel, stream passwords."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tidecast.access import tokens

SECRET = "s3cret-for-tests-0123"


def test_token_is_nginx_secure_link_md5() -> None:
    token = tokens.issue(SECRET, "main", 2_000_000_000.7)
    expires, _, digest = token.partition(".")
    assert expires == "2000000000"
    want = hashlib.md5(f"2000000000/hls/main/ {SECRET}".encode()).digest()
    assert base64.urlsafe_b64decode(digest + "==") == want and "=" not in digest


@pytest.mark.parametrize(
    ("token", "stream", "now", "reason"),
    [
        (tokens.issue(SECRET, "main", 1000), "main", 999.9, ""),
        (tokens.issue(SECRET, "main", 1000), "main", 1000.5, ""),  # nginx: expired once in the past
        (tokens.issue(SECRET, "main", 1000), "main", 1001, "expired"),
        (tokens.issue(SECRET, "main", 1000), "other", 10, "wrong"),
        (tokens.issue("another-secret-xyz1", "main", 1000), "main", 10, "wrong"),
        ("1000." + "A" * 22, "main", 10, "wrong"),
        ("2000." + tokens.issue(SECRET, "main", 1000).split(".")[1], "main", 10, "wrong"),
        ("", "main", 10, "malformed"),
        ("1000", "main", 10, "malformed"),
        ("x.y", "main", 10, "malformed"),
        ("1000." + "A" * 23, "main", 10, "malformed"),
        ("1" * 13 + "." + "A" * 22, "main", 10, "malformed"),
    ],
)
def test_verify(token: str, stream: str, now: float, reason: str) -> None:
    got = tokens.verify(SECRET, token, stream, now)
    assert got.ok == (reason == "") and got.reason == reason


def test_path_form() -> None:
    assert tokens.split_path("main/720p.m3u8") == (None, "main/720p.m3u8")
    assert tokens.split_path("main/~1.abc/720p.m3u8") == ("1.abc", "main/720p.m3u8")
    assert tokens.split_path("main/~1.abc/b1/720p/000001.m4s") == (
        "1.abc",
        "main/b1/720p/000001.m4s",
    )
    assert tokens.split_path("main/~/x") == ("", "main/x")
    assert tokens.split_path("main/~1.abc") == ("1.abc", "main")
    assert tokens.split_path("main") == (None, "main")
    assert tokens.tokenized_path("main", "1.abc", "master.m3u8") == "/hls/main/~1.abc/master.m3u8"


def test_cookies_round_trip() -> None:
    sets = tokens.set_cookie_headers("main", "123.abc", 60, secure=True)
    paths = sorted(
        next(p.split("=", 1)[1] for p in c.split("; ") if p.lower().startswith("path="))
        for c in sets
    )
    assert paths == ["/api/v1/", "/chat/main", "/hls/main/"]
    assert all(
        "HttpOnly" in c and "SameSite=Lax" in c and "Secure" in c and "Max-Age=60" in c
        for c in sets
    )
    header = (
        "a=b; tidecast_play=1.x; tidecast_play_main=2.y; tidecast_play_other=3.z; tidecast_play=4.w"
    )
    assert tokens.cookie_tokens(header, "main") == ["1.x", "2.y", "4.w"]
    assert tokens.cookie_tokens("", "main") == [] and tokens.cookie_tokens("x=1", "main") == []


def test_secret_rules() -> None:
    assert tokens.check_secret("a" * 16) == "a" * 16
    for bad in ("short", "has space in it!!", 'quote"quote"quote"', "dollar$dollar$dollar"):
        with pytest.raises(tokens.BadSecret):
            tokens.check_secret(bad)


def test_passwords() -> None:
    stored = tokens.hash_password("hunter2")
    assert stored.startswith("scrypt$") and "hunter2" not in stored
    assert tokens.check_password("hunter2", stored)
    assert not tokens.check_password("hunter3", stored)
    assert tokens.hash_password("hunter2") != stored  # salted
    for broken in ("", "scrypt$1$2", "scrypt$x$8$1$00$00", "bcrypt$..."):
        assert not tokens.check_password("hunter2", broken)
    assert not tokens.check_password("x" * 1000, stored)
    with pytest.raises(ValueError, match="1-256"):
        tokens.hash_password("")
