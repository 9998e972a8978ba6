"""Chat identity tokens for the streamer and moderators, issued by the API.

A token is ``base64url(json claims) + "." + base64url(HMAC-SHA256)`` signed with
a secret kept in the data dir; the role comes only from a verified token, never
from what a client says about itself. Each token has an ``id``, by which it can be
revoked (``ChatSanctions.revoke_token``); tokens without one are refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass


class BadToken(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ChatClaims:
    stream: str
    name: str
    role: str
    expires: float
    id: str = ""  # issue() gives a new token one


def new_token_id() -> str:
    return "ct_" + secrets.token_hex(8)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(secret: bytes, claims: ChatClaims) -> str:
    raw = {"stream": claims.stream, "name": claims.name, "role": claims.role, "expires": claims.expires,
           "id": claims.id or new_token_id()}  # fmt: skip
    body = _b64(json.dumps(raw, separators=(",", ":")).encode())
    sig = _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())
    return f"{body}.{sig}"


def verify(secret: bytes, token: str, stream: str, now: float | None = None) -> ChatClaims:
    try:
        body, sig = token.split(".", 1)
        expected = _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(sig, expected):
            raise BadToken("bad signature")
        raw = json.loads(_unb64(body))
        claims = ChatClaims(str(raw["stream"]), str(raw["name"]), str(raw["role"]), float(raw["expires"]),
                            str(raw["id"]))  # fmt: skip
    except (ValueError, KeyError, TypeError) as exc:
        raise BadToken(f"invalid chat token: {exc}") from None
    if claims.stream != stream:
        raise BadToken("the token is for another stream")
    if claims.expires < (now or time.time()):
        raise BadToken("the token has expired")
    return claims
