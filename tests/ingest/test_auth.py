"""Ingest auth with a real database, real JWTs and real HTTP servers for the JWKS and
the webhooks (``httpstub.StubServer``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.ingest.httpstub import StubServer

from tidecast.db.repo import Database
from tidecast.ingest.access import AddressRules
from tidecast.ingest.auth import IngestAuth, PublishRefused, split_credential
from tidecast.ingest.bans import BanPolicy, MemoryBans
from tidecast.ingest.tokens import IngestTokens, JWKSKeys, TokenRefused
from tidecast.ingest.webhooks import Webhooks, decide

SECRET = b"s" * 32


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"aud": "tidecast-ingest", "iss": "tidecast", "stream": "main", "nbf": now - 1,
            "exp": now + 60, "iat": now, "jti": "j1", **over}  # fmt: skip


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    d = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    yield d
    d.close()


async def test_issued_token_verifies_for_its_stream() -> None:
    tokens = IngestTokens(SECRET)
    token, expires = tokens.issue("main", 600, time.time())
    got = await tokens.verify(token)
    assert got.stream == "main" and got.key_id.startswith("jwt:") and got.expires == expires
    assert expires == pytest.approx(time.time() + 600, abs=2)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: jwt.encode(claims(exp=int(time.time()) - 60), SECRET, "HS256"), "token expired"),
        (lambda: jwt.encode(claims(nbf=int(time.time()) + 600), SECRET, "HS256"), "not valid yet"),
        (lambda: jwt.encode(claims(aud="someone-else"), SECRET, "HS256"), "another audience"),
        (lambda: jwt.encode(claims(), b"x" * 32, "HS256"), "signature does not verify"),
        (
            lambda: jwt.encode(
                {k: v for k, v in claims().items() if k != "stream"}, SECRET, "HS256"
            ),
            "'stream'",
        ),
        (
            lambda: jwt.encode({k: v for k, v in claims().items() if k != "exp"}, SECRET, "HS256"),
            "'exp'",
        ),
        (lambda: jwt.encode(claims(stream=7), SECRET, "HS256"), "stream claim"),
        (lambda: jwt.encode(claims(), None, "none"), "algorithm 'none'"),
        (lambda: jwt.encode(claims(iss="mallory"), SECRET, "HS256"), "unexpected issuer"),
        (lambda: "eyJhbGciOi.broken.token", "malformed"),
        (lambda: "ey" + "a" * 5000 + ".b.c", "too long"),
    ],
)
async def test_bad_tokens_are_refused_with_a_reason(make: Callable[[], str], message: str) -> None:
    token = make()  # made now: tokens made at collection would expire in a long run
    with pytest.raises(TokenRefused, match=message):
        await IngestTokens(SECRET).verify(token)


def hs256(payload: dict[str, Any], secret: bytes, kid: str) -> str:
    """An HS256 JWT made by hand (PyJWT refuses a PEM key as an HMAC secret, as it should)."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(payload).encode())
    sig = b64(hmac.new(secret, head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


def rsa_jwk(kid: str) -> tuple[Any, dict[str, Any]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return key, {**public, "kid": kid, "use": "sig", "alg": "RS256"}


async def test_external_issuer_through_its_jwks() -> None:
    key, public = rsa_jwk("k1")
    other, _ = rsa_jwk("k2")
    with StubServer(lambda path, body: (200, json.dumps({"keys": [public]}).encode(), 0)) as stub:
        jwks = JWKSKeys(stub.url("/jwks.json"), timeout=2, refresh_every=30)
        tokens = IngestTokens(SECRET, jwks=jwks, jwks_issuer="https://idp.example")
        good = jwt.encode(
            claims(iss="https://idp.example", jti="ext1"), key, "RS256", headers={"kid": "k1"}
        )
        got = await tokens.verify(good)
        assert (got.stream, got.key_id) == ("main", "jwt:ext1")
        forged = jwt.encode(
            claims(iss="https://idp.example"), other, "RS256", headers={"kid": "k1"}
        )
        with pytest.raises(TokenRefused, match="signature"):
            await tokens.verify(forged)
        wrong_iss = jwt.encode(
            claims(iss="https://evil.example"), key, "RS256", headers={"kid": "k1"}
        )
        with pytest.raises(TokenRefused, match="issuer"):
            await tokens.verify(wrong_iss)
        for i in range(20):  # unknown kids do not make tidecast hammer the issuer
            unknown = jwt.encode(claims(), other, "RS256", headers={"kid": f"nope{i}"})
            with pytest.raises(TokenRefused, match="unknown key"):
                await tokens.verify(unknown)
        assert len(stub.bodies("/jwks.json")) == 1
        # a public key passed off as an HMAC secret (algorithm confusion) is refused
        pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
        confused = hs256(claims(iss="https://idp.example"), pem, kid="k1")
        with pytest.raises(TokenRefused, match="signature"):
            await tokens.verify(confused)


async def test_unreachable_jwks_refuses_cleanly() -> None:
    key, _ = rsa_jwk("k1")
    tokens = IngestTokens(SECRET, jwks=JWKSKeys("http://127.0.0.1:9/jwks.json", timeout=1))
    with pytest.raises(TokenRefused, match="unknown key"):
        await tokens.verify(jwt.encode(claims(), key, "RS256", headers={"kid": "k1"}))
    assert tokens.jwks is not None and tokens.jwks.errors == 1


def test_split_credential() -> None:
    assert split_credential("sk_abc") == ("sk_abc", "")
    assert split_credential("sk_abc?x=1") == ("sk_abc", "")
    assert split_credential("main?token=eyJ.a.b") == ("eyJ.a.b", "main")
    assert split_credential("eyJ.a.b") == ("eyJ.a.b", "")


async def test_keys_tokens_rules_and_bans(db: Database) -> None:
    key = db.create_stream("main").key
    db.create_stream("other")
    now = [1000.0]
    tokens = IngestTokens(SECRET)
    auth = IngestAuth(db, tokens=tokens, rules=AddressRules.parse(deny="192.0.2.0/24"),
                      bans=MemoryBans(BanPolicy(max_failures=3, window=60, ban_seconds=100)),
                      clock=lambda: now[0])  # fmt: skip
    a = await auth.admit(key, "198.51.100.1", "live", "rtmp")
    assert a.stream.name == "main" and a.key_id.startswith("key:") and key not in a.key_id
    token, _ = tokens.issue("other", 600, time.time())
    assert (await auth.admit(token, "198.51.100.1", "live", "rtmps")).stream.name == "other"
    assert (
        await auth.admit(f"other?token={token}", "198.51.100.1", "live", "rtmp")
    ).stream.name == "other"
    with pytest.raises(PublishRefused, match="token is for stream 'other', not 'main'") as info:
        await auth.admit(f"main?token={token}", "198.51.100.2", "live", "rtmp")
    assert info.value.code == "NetStream.Publish.BadName"
    with pytest.raises(PublishRefused, match="denied"):
        await auth.admit(key, "192.0.2.9", "live", "rtmp")
    assert auth.address_refusal("192.0.2.9") is not None
    # per-stream rules
    db.set_ingest_access("main", "", "198.51.100.5/32")
    with pytest.raises(PublishRefused, match="denied .* for stream 'main'"):
        await auth.admit(key, "198.51.100.5", "live", "rtmp")
    # the third failure from .2 bans it (the wrong-stream token above was the first)
    for _ in range(2):
        with pytest.raises(PublishRefused, match="unknown stream key"):
            await auth.admit("sk_wrong", "198.51.100.2", "live", "rtmp")
    refusal = auth.address_refusal("198.51.100.2")
    assert refusal is not None and "banned for 100 s" in refusal
    with pytest.raises(PublishRefused, match="banned"):
        await auth.admit(key, "198.51.100.2", "live", "rtmp")  # even with the right key
    assert auth.address_refusal("198.51.100.1") is None
    now[0] += 101
    assert (await auth.admit(key, "198.51.100.2", "live", "rtmp")).stream.name == "main"


def test_webhook_rule() -> None:
    assert decide(200, "", None, "deny").allowed
    assert decide(204, "", None, "deny").allowed
    d = decide(403, "stream is\n suspended", None, "allow")
    assert not d.allowed and d.answered and "403: stream is suspended" in d.reason
    assert not decide(302, "", None, "allow").allowed
    assert not decide(None, "", "no answer within 1 s", "deny").allowed
    d = decide(None, "", "no answer within 1 s", "allow")
    assert d.allowed and not d.answered


async def test_webhooks_over_http(db: Database) -> None:
    key = db.create_stream("main").key

    def answer(path: str, body: Any) -> tuple[int, bytes, float]:
        if path == "/slow":
            return 200, b"", 3.0
        if path == "/no":
            return 403, b"not today", 0
        return 200, b"ok", 0

    with StubServer(answer) as stub:
        for url, rule, allowed in [("/yes", "deny", True), ("/no", "allow", False),
                                   ("/slow", "deny", False), ("/slow", "allow", True)]:  # fmt: skip
            hooks = Webhooks(stub.url(url), stub.url("/done"), timeout=0.5, timeout_rule=rule)
            auth = IngestAuth(db, webhooks=hooks)
            a = await auth.admit(key, "198.51.100.1", "live", "rtmp")
            t0 = time.monotonic()
            if allowed:
                await auth.approve(a)
            else:
                with pytest.raises(PublishRefused):
                    await auth.approve(a)
            assert time.monotonic() - t0 < 2
            auth.done(a, "unpublished")
            await auth.aclose()
        body = stub.bodies("/yes")[0]
        assert body["action"] == "on_publish" and body["stream"] == "main" and body["app"] == "live"
        assert body["client_ip"] == "198.51.100.1" and body["key_id"] == a.key_id
        done = stub.bodies("/done")
        assert len(done) == 4 and done[0]["action"] == "on_publish_done"
        assert done[0]["reason"] == "unpublished"
