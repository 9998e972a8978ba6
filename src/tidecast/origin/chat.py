"""HTTP for chat: the WebSocket endpoint /chat/<stream>, chat tokens, and replay.

A chat socket is refused (an ``error`` event, then close code 4029) past the
per-address cap, and closed (4008) if it has not joined within the join
deadline; a banned address is refused at once (4003). A chat token can be
revoked (``DELETE /api/v1/streams/<name>/chat-tokens/<id>``): it stops working
on every node, and connections that joined with it are closed (4001).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from fastapi import APIRouter, Depends, HTTPException, Response, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field

from tidecast.chat.hub import ChatHub
from tidecast.chat.protocol import ChatError, check_name, dumps
from tidecast.chat.tokens import BadToken, ChatClaims, issue, new_token_id, verify
from tidecast.db.repo import Database, StreamNotFound

log = logging.getLogger("tidecast.chat")

MAX_TTL_HOURS = 24 * 365  # a revocation is kept this long (no token outlives it)


class ChatTokenCreate(BaseModel):
    name: str = Field(description="display name in chat")
    role: str = Field("moderator", description="moderator | streamer")
    ttl_hours: float = Field(24.0, gt=0, le=MAX_TTL_HOURS)


class ChatTokenOut(BaseModel):
    id: str = Field(description="revoke with DELETE /api/v1/streams/{name}/chat-tokens/{id}")
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


async def _refuse(ws: WebSocket, error: ChatError, code: int) -> None:
    await ws.accept()
    await ws.send_text(dumps(error.event()))
    await ws.close(code=code, reason=error.code)


def chat_routes(
    hub: ChatHub, db: Database, secret: bytes, require_admin: Callable[..., None],
    client_ip: Callable[[WebSocket], str], join_timeout: float = 5.0,
) -> APIRouter:  # fmt: skip
    router = APIRouter()

    @router.websocket("/chat/{stream}")
    async def chat(ws: WebSocket, stream: str, token: str | None = None) -> None:
        ip = client_ip(ws)
        if hub.sockets.take(ip) is not None:
            await _refuse(ws, ChatError("too_many_connections", "too many chat connections from your address"), 4029)
            return
        try:
            await _chat(ws, stream, token, ip)
        finally:
            hub.sockets.release(ip)

    async def _chat(ws: WebSocket, stream: str, token: str | None, ip: str) -> None:
        loop = asyncio.get_running_loop()
        join_by = loop.time() + join_timeout  # the socket must have joined by then
        try:
            await asyncio.to_thread(db.get_stream, stream)
        except StreamNotFound:
            await ws.close(code=4404, reason="no such stream")
            return
        identity = None
        token_id = ""
        if token:
            try:
                claims = verify(secret, token, stream)
                if not claims.id:
                    raise BadToken("a token from before tokens could be revoked: ask for a new one")
                if hub.sanctions is not None and await asyncio.to_thread(
                    hub.sanctions.token_revoked, claims.id, time.time()
                ):
                    raise BadToken("the token was revoked")
                identity, token_id = (claims.name, claims.role), claims.id
            except BadToken as exc:
                await _refuse(ws, ChatError("bad_token", str(exc)), 4001)
                return
        refused = await hub.admit(stream, ip, privileged=identity is not None)
        if refused is not None:
            await _refuse(ws, refused, 4003)
            return
        await ws.accept()
        conn = hub.connect(
            stream, ws.send_text, lambda code, reason: ws.close(code, reason), raw_writer(ws)
        )
        conn.extra["token_id"] = token_id
        try:
            while not conn.dead:
                if conn.joined:
                    msg = await ws.receive()
                else:
                    try:
                        async with asyncio.timeout_at(join_by):
                            msg = await ws.receive()
                    except TimeoutError:
                        await ws.close(code=4008, reason=f"join within {join_timeout:g} s")
                        break
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
        claims = ChatClaims(name, display, body.role, time.time() + body.ttl_hours * 3600, new_token_id())
        return ChatTokenOut(
            id=claims.id, token=issue(secret, claims), name=display, role=body.role, expires=claims.expires
        )

    @router.delete("/api/v1/streams/{name}/chat-tokens/{token_id}", status_code=204,
                   dependencies=[Depends(require_admin)], responses={404: {}, 503: {}})  # fmt: skip
    async def revoke_chat_token(name: str, token_id: str) -> Response:
        """The token stops working on every node; whoever joined with it leaves the chat."""
        if hub.sanctions is None:
            raise HTTPException(404, "chat tokens cannot be revoked here")
        if not token_id.startswith("ct_") or len(token_id) > 40:
            raise HTTPException(422, "not a chat token id")
        try:
            await asyncio.to_thread(hub.sanctions.revoke_token, token_id,
                                    time.time() + MAX_TTL_HOURS * 3600)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - answered 503: the caller tries again
            log.warning("chat token %s could not be revoked: %r", token_id, exc)
            raise HTTPException(503, "the database is unavailable; try again") from None
        await hub.revoke(name, token_id)
        return Response(status_code=204)

    @router.get("/api/v1/broadcasts/{broadcast}/chat", response_model=list[ChatMessageOut])
    async def chat_replay(broadcast: str) -> list[ChatMessageOut]:
        """The broadcast's chat (deleted messages left out), for replay beside the VOD."""
        rows = await asyncio.to_thread(hub.chat_log.for_broadcast, broadcast)
        return [ChatMessageOut(id=r.id, user=r.user, role=r.role, text=r.text, ts=r.ts, offset=r.offset)
                for r in rows]  # fmt: skip

    return router
