"""HTTP for playback access: stream access settings, playback tokens, the password
exchange of the watch page, and the gate in front of downloads and chat.

- ``PUT /api/v1/streams/<name>`` (admin) ``{"access": "public"|"token"|"password",
  "password": "...", "encryption": "none"|"aes-128"}``: any of them.
- ``GET /api/v1/streams/<name>/playback``: the stream's access, and whether the
  caller's cookie already holds a valid token (the watch page asks first).
- ``POST /api/v1/streams/<name>/playback-tokens`` (admin) ``{"ttl": s}``:
  ``{"token", "expires", "master_url", "path_prefix"}``; ``master_url`` carries the
  token in its path, so a plain player passes it on to every child URI.
- ``POST /api/v1/streams/<name>/playback-session`` ``{"password": "..."}`` (or
  ``{"token": "..."}``, a token from a link): sets the cookies the browser player
  needs and answers like the above. Wrong passwords are limited per address and
  per stream (429 with Retry-After once over).
- ``PlaybackGate``: downloads and chat replay of a broadcast, and the chat
  WebSocket, need a valid token when the stream is not public (cookie, or
  ``?playback_token=``); refused with 403 (a WebSocket before it is accepted).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, Field

from tidecast.access import tokens
from tidecast.access.limits import AttemptLimiter
from tidecast.config import Settings
from tidecast.db import transient
from tidecast.db.playback import Policy, low_latency
from tidecast.db.repo import StreamNotFound
from tidecast.origin.playback import PlaybackGuard

log = logging.getLogger("tidecast.origin.playback")

_BROADCAST_API = re.compile(r"^/api/v1/broadcasts/([^/]+)/(download|chat)$")
_CHAT = re.compile(r"^/chat/([^/]+)$")


class StreamSettings(BaseModel):
    access: Literal["public", "token", "password"] | None = Field(
        None, description="who may watch the stream, its recordings and its chat"
    )
    password: str | None = Field(None, min_length=1, max_length=tokens.MAX_PASSWORD,
                                 description='the stream password (access "password")')  # fmt: skip
    encryption: Literal["none", "aes-128"] | None = Field(
        None, description="HLS AES-128 for the broadcasts that start from now on"
    )
    latency: Literal["", "low", "standard"] | None = Field(
        None, description='LL-HLS parts ("low") or whole segments ("standard") for the broadcasts '
                          'that start from now on; "" follows the node (ll_hls)',
    )  # fmt: skip


class StreamSettingsOut(BaseModel):
    name: str
    access: str
    encryption: str
    latency: str = Field(description='"" when the stream follows the node (ll_hls)')
    low_latency: bool = Field(description="its next broadcast gets LL-HLS parts")
    has_password: bool


class PlaybackInfo(BaseModel):
    name: str
    access: str
    token_valid: bool = Field(description="the caller's cookie holds a valid token already")


class TokenCreate(BaseModel):
    ttl: float | None = Field(
        None, ge=60, le=tokens.MAX_TTL, description="seconds (default: the setting)"
    )


class TokenOut(BaseModel):
    token: str
    expires: int = Field(description="epoch seconds")
    master_url: str = Field(description="tokenized live master playlist for any HLS player")
    path_prefix: str = Field(description="prepend to <broadcast>/master.m3u8 for a VOD")


class SessionCreate(BaseModel):
    password: str | None = Field(None, max_length=tokens.MAX_PASSWORD)
    token: str | None = Field(None, max_length=100)


def _out(p: Policy, node_default: bool) -> StreamSettingsOut:
    return StreamSettingsOut(name=p.stream, access=p.access, encryption=p.encryption, latency=p.latency,
                             low_latency=low_latency(p.latency, p.encryption, node_default),
                             has_password=bool(p.password_hash))  # fmt: skip


def playback_router(
    guard: PlaybackGuard, settings: Settings, require_admin: Callable[..., None],
    client_ip: Callable[[Request], str] | None = None, scheme: Callable[[Request], str] | None = None,
) -> APIRouter:  # fmt: skip
    """``client_ip``: who a request comes from (trusted X-Forwarded-For; default: the
    peer); ``scheme``: how the client reached us (X-Forwarded-Proto of a trusted
    edge; default: this connection's)."""
    api = APIRouter(prefix="/api/v1")
    address_of = client_ip or (lambda r: r.client.host if r.client else "?")
    scheme_of = scheme or (lambda r: r.url.scheme)
    playback = guard.playback
    limiter = AttemptLimiter(per_address=settings.password_attempts)

    async def policy_of(name: str) -> Policy:
        try:
            return await transient.call("playback policy", playback.policy, name, deadline=5.0)
        except StreamNotFound:
            raise HTTPException(404, f"no stream named {name!r}") from None

    def token_out(request: Request, name: str, token: str, expires: int) -> TokenOut:
        prefix = tokens.tokenized_path(name, token, "")
        base = str(request.base_url.replace(scheme=scheme_of(request))).rstrip("/")
        return TokenOut(token=token, expires=expires, master_url=f"{base}{prefix}master.m3u8",
                        path_prefix=prefix)  # fmt: skip

    @api.put("/streams/{name}", response_model=StreamSettingsOut, dependencies=[Depends(require_admin)],
             responses={401: {}, 404: {}, 422: {}})  # fmt: skip
    async def put_stream(name: str, body: StreamSettings) -> StreamSettingsOut:
        current = await policy_of(name)
        access = body.access or current.access
        encryption = body.encryption or current.encryption
        latency = current.latency if body.latency is None else body.latency
        if latency == "low" and not settings.ll_hls:
            raise HTTPException(422, 'latency "low" needs LL-HLS on the node (ll_hls)')
        if encryption == "aes-128" and latency == "low":
            raise HTTPException(422, 'AES-128 cannot be combined with latency "low" (LL-HLS parts): '
                                     "segments are encrypted whole; an encrypted stream plays with "
                                     'latency "standard"')  # fmt: skip
        if encryption == "aes-128" and access == "public":
            raise HTTPException(422, 'AES-128 needs access "token" or "password": the keys of a public '
                                     "stream would go to anyone")  # fmt: skip
        if access == "password" and not (body.password or current.password_hash):
            raise HTTPException(422, 'access "password" needs a "password"')
        hashed = None
        if body.password is not None:
            hashed = await asyncio.to_thread(tokens.hash_password, body.password)
        try:
            p = await transient.call("set playback policy", playback.set_policy, name, access=body.access,
                                     password_hash=hashed, encryption=body.encryption, latency=body.latency,
                                     deadline=5.0)  # fmt: skip
        except StreamNotFound:
            raise HTTPException(404, f"no stream named {name!r}") from None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        guard.forget(name)
        log.info("stream %s: access %s, encryption %s, latency %s", name, p.access, p.encryption,
                 p.latency or "the node's")  # fmt: skip
        return _out(p, settings.ll_hls)

    @api.get("/streams/{name}/playback", response_model=PlaybackInfo, responses={404: {}})
    async def get_playback(name: str, request: Request) -> PlaybackInfo:
        p = await policy_of(name)
        held = tokens.cookie_tokens(request.headers.get("cookie", ""), name)
        return PlaybackInfo(name=name, access=p.access, token_valid=guard.token_valid(name, held))

    @api.post("/streams/{name}/playback-tokens", response_model=TokenOut, status_code=201,
              dependencies=[Depends(require_admin)], responses={401: {}, 404: {}, 422: {}})  # fmt: skip
    async def create_token(
        name: str, request: Request, body: TokenCreate | None = None
    ) -> TokenOut:
        """A playback token for the stream (live, its recordings and chat)."""
        await policy_of(name)
        ttl = body.ttl if body is not None and body.ttl is not None else settings.playback_token_ttl
        token, expires = guard.issue(name, ttl)
        return token_out(request, name, token, expires)

    @api.post("/streams/{name}/playback-session", response_model=TokenOut,
              responses={403: {}, 404: {}, 422: {}, 429: {}})  # fmt: skip
    async def create_session(
        name: str, body: SessionCreate, request: Request, response: Response
    ) -> TokenOut:
        """The watch page's exchange: the stream's password (or a token from a link) for
        the cookies the player and chat need."""
        p = await policy_of(name)
        now = time.time()
        if body.token is not None:
            checked = tokens.verify(guard.secret, body.token, name, guard.clock())
            if not checked.ok:
                raise HTTPException(
                    403, f"playback token {'expired' if checked.reason == 'expired' else 'invalid'}"
                )
            token, expires = body.token, checked.expires
        elif body.password is not None:
            if p.access != "password":
                raise HTTPException(403, "this stream has no password" if p.access == "public"
                                    else "this stream takes playback tokens only")  # fmt: skip
            address = address_of(request)
            wait = limiter.allowed(address, name, now)
            if wait > 0:
                raise HTTPException(429, "too many wrong passwords; try again later",
                                    {"retry-after": str(max(1, int(wait + 0.999)))})  # fmt: skip
            ok = await asyncio.to_thread(tokens.check_password, body.password, p.password_hash)
            if not ok:
                limiter.failed(address, name, now)
                log.info("stream %s: wrong password from %s", name, address)
                raise HTTPException(403, "wrong password")
            token, expires = guard.issue(name, settings.playback_token_ttl)
        else:
            raise HTTPException(422, 'send "password" (or "token")')
        secure = scheme_of(request) == "https"
        for value in tokens.set_cookie_headers(name, token, max(1, int(expires - now)), secure):
            response.headers.append("set-cookie", value)
        return token_out(request, name, token, expires)

    return api


class PlaybackGate:
    """ASGI middleware: a broadcast's download and chat replay, and a stream's chat
    WebSocket, follow the stream's access."""

    def __init__(self, app: Any, guard: PlaybackGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope.get("type")
        stream = ""
        path = scope.get("path", "")
        if kind == "http" and path.startswith("/api/v1/broadcasts/"):
            m = _BROADCAST_API.match(path)
            if m:
                k = await self.guard.broadcast_keys(m.group(1))
                stream = k.stream if k is not None else ""
        elif kind == "websocket":
            m = _CHAT.match(path)
            stream = m.group(1) if m else ""
        if stream and not await self._allowed(scope, stream):
            detail = "this stream needs a playback token"
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 4403, "reason": detail})
                return
            body = json.dumps({"detail": detail}).encode()
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()),
                                    (b"cache-control", b"no-store")]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    async def _allowed(self, scope: dict[str, Any], stream: str) -> bool:
        policy = await self.guard.policy(stream)
        if policy is None or policy.access == "public":
            return True
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        held = tokens.cookie_tokens(headers.get("cookie", ""), stream)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        held += query.get("playback_token", [])
        return self.guard.token_valid(stream, held)
