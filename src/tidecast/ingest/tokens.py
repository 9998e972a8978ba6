"""Short-lived ingest tokens: JWTs a publisher uses in place of the stream key.

    tokens = IngestTokens(secret, audience="tidecast-ingest")
    token, expires = tokens.issue("main", ttl=3600, now=time.time())
    claims = await tokens.verify(token)   # -> TokenClaims(stream="main", key_id="jwt:...")

A token carries ``aud`` (the configured audience), ``exp``, ``nbf``, ``iat``, a
``stream`` claim naming the one stream it may publish, and a ``jti``. Tokens
tidecast issues (``POST /api/v1/streams/<name>/ingest-tokens``) are HS256 with a
secret shared by the deployment's ingest and origin nodes. With
``ingest_jwks_url`` set, tokens of an external issuer are accepted too:
asymmetric ones (RS/PS/ES/EdDSA) whose ``kid`` is in that JWKS, and, with
``ingest_jwks_issuer``, whose ``iss`` matches.

``verify`` raises ``TokenRefused`` with a description fit to send to the
publisher; it never raises anything else for a bad token. The JWKS is fetched
with a deadline (``JWKSKeys``), cached, and fetched again for an unknown
``kid`` at most once per ``refresh_every`` seconds, so forged ``kid`` values
cannot make tidecast hammer the issuer.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

log = logging.getLogger("tidecast.ingest.tokens")

LOCAL_ALGORITHM = "HS256"
EXTERNAL_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                       "ES256", "ES384", "ES512", "EdDSA")  # fmt: skip
MAX_TOKEN_LENGTH = 4096
REQUIRED_CLAIMS = ["exp", "nbf", "aud", "stream"]
LEEWAY = 5.0  # seconds of clock skew forgiven on exp/nbf


class TokenRefused(Exception):
    """The token does not let anyone publish; ``description`` says why."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


def looks_like_jwt(credential: str) -> bool:
    """A compact JWS (three base64url parts) rather than a stream key."""
    return credential.count(".") == 2 and credential.startswith("ey")


@dataclass(frozen=True, slots=True)
class TokenClaims:
    stream: str
    key_id: str  # "jwt:<jti>" (or the issuer's kid when there is no jti): for logs and webhooks
    expires: float


class JWKSKeys:
    """An external issuer's signing keys, fetched from its JWKS URL with a deadline."""

    def __init__(self, url: str, timeout: float = 3.0, lifespan: float = 300.0,
                 refresh_every: float = 30.0) -> None:  # fmt: skip
        self.url = url
        self.timeout = timeout
        self.lifespan = lifespan
        self.refresh_every = refresh_every
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched = float("-inf")  # monotonic time of the last fetch (or attempt)
        self._lock = asyncio.Lock()
        self.fetches = 0
        self.errors = 0

    async def key(self, kid: str) -> jwt.PyJWK:
        now = time.monotonic()
        if kid not in self._keys or now - self._fetched > self.lifespan:
            async with self._lock:
                stale = time.monotonic() - self._fetched
                if (kid not in self._keys and stale > self.refresh_every) or stale > self.lifespan:
                    await self._fetch()
        found = self._keys.get(kid)
        if found is None:
            raise TokenRefused(f"token signed by an unknown key (kid {kid[:64]!r})")
        return found

    async def _fetch(self) -> None:
        self._fetched = time.monotonic()
        self.fetches += 1
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                r = await client.get(self.url)
            r.raise_for_status()
            data: Any = r.json()
            keyset = jwt.PyJWKSet.from_dict(data)
        except (httpx.HTTPError, ValueError, jwt.PyJWKSetError, jwt.InvalidKeyError) as exc:
            self.errors += 1
            log.warning("cannot fetch the ingest JWKS from %s: %s", self.url, exc)
            return  # the keys fetched before stay in use
        self._keys = {k.key_id: k for k in keyset.keys if k.key_id}
        log.info("ingest JWKS from %s: %d key(s)", self.url, len(self._keys))


class IngestTokens:
    def __init__(self, secret: bytes, audience: str = "tidecast-ingest", issuer: str = "tidecast",
                 jwks: JWKSKeys | None = None, jwks_issuer: str = "") -> None:  # fmt: skip
        if len(secret) < 32:
            raise ValueError("the ingest token secret needs at least 32 bytes")
        self.secret = secret
        self.audience = audience
        self.issuer = issuer
        self.jwks = jwks
        self.jwks_issuer = jwks_issuer

    def issue(self, stream: str, ttl: float, now: float) -> tuple[str, float]:
        """A token for ``stream``, valid from now for ``ttl`` seconds: (token, expiry)."""
        expires = int(now + ttl)
        claims = {"iss": self.issuer, "aud": self.audience, "stream": stream, "iat": int(now),
                  "nbf": int(now), "exp": expires, "jti": secrets.token_urlsafe(9)}  # fmt: skip
        return jwt.encode(claims, self.secret, algorithm=LOCAL_ALGORITHM), float(expires)

    async def verify(self, token: str) -> TokenClaims:
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenRefused("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise TokenRefused("malformed token") from None
        alg = header.get("alg")
        if alg == LOCAL_ALGORITHM:
            key: Any = self.secret
            algorithms = [LOCAL_ALGORITHM]
            issuer: str | None = self.issuer
        elif self.jwks is not None and alg in EXTERNAL_ALGORITHMS:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise TokenRefused("token has no kid: cannot pick the issuer's key")
            jwk = await self.jwks.key(kid)
            key, algorithms, issuer = jwk, list(EXTERNAL_ALGORITHMS), self.jwks_issuer or None
        else:
            raise TokenRefused(f"token algorithm {str(alg)[:16]!r} is not accepted")
        try:
            claims = jwt.decode(
                token, key, algorithms=algorithms, audience=self.audience, issuer=issuer,
                leeway=LEEWAY, options={"require": REQUIRED_CLAIMS + (["iss"] if issuer else [])},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise TokenRefused("token expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRefused("token not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise TokenRefused("token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise TokenRefused("token from an unexpected issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRefused(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise TokenRefused("token signature does not verify") from None
        except jwt.InvalidTokenError as exc:
            raise TokenRefused(f"invalid token: {exc}") from None
        stream = claims.get("stream")
        if not isinstance(stream, str) or not stream:
            raise TokenRefused("token's stream claim is not a stream name")
        jti = claims.get("jti")
        ident = jti if isinstance(jti, str) and jti else str(header.get("kid", "?"))
        return TokenClaims(stream, f"jwt:{ident[:64]}", float(claims["exp"]))
