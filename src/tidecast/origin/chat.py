"""HTTP for chat: the WebSocket endpoint /chat/<stream>, chat tokens, and replay."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from fastapi import APIRouter, Depends, HTTPException, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field

from tidecast.chat.hub import ChatHub
from tidecast.chat.protocol import ChatError, check_name, dumps
from tidecast.chat.tokens import BadToken, ChatClaims, issue, verify
from tidecast.db.repo import Database, StreamNotFound

log = logging.getLogger("tidecast.chat")


class ChatTokenCreate(BaseModel):
    name: str = Field(description="display name in chat")
    role: str = Field("moderator", description="moderator | streamer")
    ttl_hours: float = Field(24.0, gt=0, le=24 * 365)


class ChatTokenOut(BaseModel):
    token: str
    name: str
    role: str
    expires: float


class ChatMessageOut(BaseModel):
    id: str
    user: str
    role: str
    text: str
    ts: float = Field(description="wall clock, epoch seconds")
    offset: float | None = Field(description="seconds from the start of the broadcast")


def raw_writer(ws: WebSocket) -> Callable[[bytes], bool] | None:
    """Direct frame writes on uvicorn's websockets (sans-I/O) protocol, if that is what
    serves this connection: a room's message is framed once and written to every
    socket that has room for it, the way ``websockets.broadcast`` does. Anything
    else (another server, a paused or closing socket) uses the ordinary ASGI send."""
    proto = getattr(getattr(ws, "_send", None), "__self__", None)
    transport = getattr(proto, "transport", None)
    writable = getattr(proto, "writable", None)
    if proto is None or transport is None or not isinstance(writable, asyncio.Event):
        return None
    if not hasattr(proto, "close_sent") or not hasattr(proto, "disconnected"):
        return None

    def write(frame: bytes) -> bool:
        if (
            proto.close_sent
            or proto.disconnected
            or transport.is_closing()
            or not writable.is_set()
        ):
            return False
        transport.write(frame)
        return True

    return write


def chat_routes(
    hub: ChatHub, db: Database, secret: bytes, require_admin: Callable[..., None]
) -> APIRouter:
    router = APIRouter()

    @router.websocket("/chat/{stream}")
    async def chat(ws: WebSocket, stream: str, token: str | None = None) -> None:
        try:
            await asyncio.to_thread(db.get_stream, stream)
        except StreamNotFound:
            await ws.close(code=4404, reason="no such stream")
            return
        identity = None
        await ws.accept()
        if token:
            try:
                claims = verify(secret, token, stream)
                identity = (claims.name, claims.role)
            except BadToken as exc:
                await ws.send_text(dumps(ChatError("bad_token", str(exc)).event()))
                await ws.close(code=4001, reason="bad token")
                return
        conn = hub.connect(
            stream, ws.send_text, lambda code, reason: ws.close(code, reason), raw_writer(ws)
        )
        ip = ws.client.host if ws.client else "?"
        try:
            while not conn.dead:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                frame = msg["text"] if msg.get("text") is not None else msg.get("bytes") or b""
                await hub.handle(conn, frame, ip=ip, token_identity=identity)
        except WebSocketDisconnect:
            log.debug("chat %s: connection %d went away", stream, conn.id)
        finally:
            await hub.disconnect(conn)

    @router.post("/api/v1/streams/{name}/chat-tokens", response_model=ChatTokenOut, status_code=201,
                 dependencies=[Depends(require_admin)], responses={404: {}, 422: {}})  # fmt: skip
    async def chat_token(name: str, body: ChatTokenCreate) -> ChatTokenOut:
        """A token that makes its holder the streamer or a moderator in this stream's chat."""
        try:
            await asyncio.to_thread(db.get_stream, name)
        except StreamNotFound:
            raise HTTPException(404, f"no stream named {name!r}") from None
        if body.role not in ("moderator", "streamer"):
            raise HTTPException(422, "role must be moderator or streamer")
        try:
            display = check_name(body.name)
        except ChatError as exc:
            raise HTTPException(422, exc.message) from None
        claims = ChatClaims(name, display, body.role, time.time() + body.ttl_hours * 3600)
        return ChatTokenOut(
            token=issue(secret, claims), name=display, role=body.role, expires=claims.expires
        )

    @router.get("/api/v1/broadcasts/{broadcast}/chat", response_model=list[ChatMessageOut])
    async def chat_replay(broadcast: str) -> list[ChatMessageOut]:
        """The broadcast's chat (deleted messages left out), for replay beside the VOD."""
        rows = await asyncio.to_thread(hub.chat_log.for_broadcast, broadcast)
        return [ChatMessageOut(id=r.id, user=r.user, role=r.role, text=r.text, ts=r.ts, offset=r.offset)
                for r in rows]  # fmt: skip

    return router
