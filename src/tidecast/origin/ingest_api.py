"""The ingest auth API (admin): ingest tokens and each stream's address rules.

- ``POST /api/v1/streams/<name>/ingest-tokens`` ``{"ttl": 600}`` (optional) returns
  ``{"token", "expires", "publish_url"}``: a short-lived JWT to publish with in place
  of the stream key (``rtmp://HOST:1935/live/<token>`` or ``.../live/<name>?token=<token>``).
- ``GET`` / ``PUT /api/v1/streams/<name>/ingest-access`` ``{"allow": [...], "deny": [...]}``:
  the stream's own CIDR lists, checked after the global ones (``ingest/access.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from tidecast.config import Settings
from tidecast.db.repo import Database, StreamNotFound
from tidecast.ingest.access import AccessRuleError, parse_networks
from tidecast.ingest.tokens import IngestTokens


class IngestTokenRequest(BaseModel):
    ttl: float | None = Field(None, description="seconds the token is valid (60..30 days); "
                                                "default: the ingest_token_ttl setting")  # fmt: skip


class IngestToken(BaseModel):
    token: str
    expires: float = Field(..., description="epoch seconds")
    publish_url: str = Field(..., description="RTMP URL with the token in place of the key")


class IngestAccess(BaseModel):
    allow: list[str] = Field(default_factory=list, description="CIDRs; empty: every address")
    deny: list[str] = Field(default_factory=list, description="CIDRs; checked first")


def ingest_router(db: Database, tokens: IngestTokens, settings: Settings,
                  require_admin: Callable[..., Any]) -> APIRouter:  # fmt: skip
    api = APIRouter(prefix="/api/v1", dependencies=[Depends(require_admin)])

    async def stream_exists(name: str) -> None:
        try:
            await asyncio.to_thread(db.get_stream, name)
        except StreamNotFound:
            raise HTTPException(404, f"no stream named {name!r}") from None

    @api.post("/streams/{name}/ingest-tokens", response_model=IngestToken, status_code=201,
              responses={401: {}, 404: {}, 422: {}})  # fmt: skip
    async def issue_ingest_token(name: str, body: IngestTokenRequest | None = None) -> IngestToken:
        ttl = body.ttl if body is not None and body.ttl is not None else settings.ingest_token_ttl
        if not 60 <= ttl <= 30 * 86400:
            raise HTTPException(422, "ttl must be 60 s..30 days")
        await stream_exists(name)
        token, expires = tokens.issue(name, ttl, time.time())
        return IngestToken(token=token, expires=expires, publish_url=settings.publish_url(token))

    @api.get(
        "/streams/{name}/ingest-access", response_model=IngestAccess, responses={401: {}, 404: {}}
    )
    async def get_ingest_access(name: str) -> IngestAccess:
        try:
            s = await asyncio.to_thread(db.get_stream, name)
        except StreamNotFound:
            raise HTTPException(404, f"no stream named {name!r}") from None
        return IngestAccess(allow=s.ingest_allow.split(), deny=s.ingest_deny.split())

    @api.put("/streams/{name}/ingest-access", response_model=IngestAccess,
             responses={401: {}, 404: {}, 422: {}})  # fmt: skip
    async def set_ingest_access(name: str, body: IngestAccess) -> IngestAccess:
        try:
            allow = " ".join(str(n) for n in parse_networks(" ".join(body.allow)))
            deny = " ".join(str(n) for n in parse_networks(" ".join(body.deny)))
        except AccessRuleError as exc:
            raise HTTPException(422, str(exc)) from None
        if len(allow) > 4000 or len(deny) > 4000:
            raise HTTPException(422, "address lists too long (4000 characters each at most)")
        try:
            s = await asyncio.to_thread(db.set_ingest_access, name, allow, deny)
        except StreamNotFound:
            raise HTTPException(404, f"no stream named {name!r}") from None
        return IngestAccess(allow=s.ingest_allow.split(), deny=s.ingest_deny.split())

    return api
