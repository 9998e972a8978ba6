"""ChatHub: WebSocket connections, rooms, bounded send queues, bus fan-out, persistence.

Every room-wide event goes out through the bus (``chat.<stream>``) and comes back
to every node, which applies it to its room state and delivers it to its own
connections — so viewers on different nodes share one room. Each connection has
a bounded send queue drained by its own writer task: a client that stops
reading overflows its queue and is disconnected; broadcast never waits on it.

Bans and timeouts are kept in the database (``ChatSanctions``): the moderator's
node records the identity before the event goes out, and every node that has
the user connected records the user's address too when the event reaches it,
then tells the others (an internal ``_sanctions`` event) to read the room's
sanctions again. A room reads them when it first opens on a node, and every
few seconds while it has people in it, so they hold across restarts and on
every node sharing the database. Internal events (``_presence``,
``_sanctions``, ``_revoke``) never reach clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tidecast.bus.base import Bus, Delivery, Subscription
from tidecast.bus.consumer import consume
from tidecast.chat.protocol import ChatError, dumps, parse_client_frame
from tidecast.chat.room import ChatLimits, Room
from tidecast.db.chat import ChatLog, ChatSanctions, Sanction, StoredMessage
from tidecast.limits import Slots
from tidecast.messages import ChatEvent
from tidecast.metrics import REGISTRY
from tidecast.supervise import Supervisor

log = logging.getLogger("tidecast.chat")

MAX_UNSTORED = 50_000  # chat messages waiting for the database; past it the oldest are dropped
QUIET_ROOM = 50  # bigger rooms get no join/leave lines, only the (coalesced) viewer count
PRESENCE_EVERY = 1.0  # seconds: viewer counts are sent at most this often per room
SANCTIONS_EVERY = 5.0  # seconds: rooms with people in them read their bans again this often

SendText = Callable[[str], Awaitable[None]]
RawWrite = Callable[[bytes], bool]  # writes a whole frame now, or returns False
CloseFn = Callable[[int, str], Awaitable[None]]
BroadcastLookup = Callable[[str], "tuple[str, float] | None"]


@dataclass(slots=True)
class ChatStats:
    connections: int = 0
    messages: int = 0
    refused: int = 0
    slow_disconnects: int = 0
    direct_writes: int = 0
    queued_writes: int = 0
    unstored_dropped: int = 0


@dataclass(eq=False, slots=True)
class Connection:
    id: int
    stream: str
    send: SendText
    close: CloseFn
    queue: asyncio.Queue[str | None]
    writer: asyncio.Task[None] | None = None
    raw: RawWrite | None = None
    sending: bool = False
    joined: bool = False
    dead: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def text_frame(text: str) -> bytes:
    """An unmasked server->client WebSocket text frame (RFC 6455 5.2)."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        header = bytes([0x81, n])
    elif n < 1 << 16:
        header = bytes([0x81, 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x81, 127]) + n.to_bytes(8, "big")
    return header + payload


class ChatHub:
    def __init__(
        self, bus: Bus, chat_log: ChatLog, lookup: BroadcastLookup, *, limits: ChatLimits | None = None,
        queue_size: int = 256, sanctions: ChatSanctions | None = None, max_per_ip: int = 20,
    ) -> None:  # fmt: skip
        self.bus = bus
        self.chat_log = chat_log
        self.lookup = lookup
        self.limits = limits or ChatLimits()
        self.queue_size = queue_size
        self.node = secrets.token_hex(4)
        self.rooms: dict[str, Room] = {}
        self.local: dict[str, dict[int, Connection]] = {}
        self.presence: dict[str, dict[str, int]] = {}
        self.stats = ChatStats()
        self.sanctions = sanctions
        self.sockets = Slots(max_per_ip)  # open sockets per client address (this node)
        self._loaded: set[str] = set()  # rooms that read their sanctions from the database
        self._ids = itertools.count(1)
        self._sub: Subscription | None = None
        self._pending_rows: list[StoredMessage] = []
        self._presence_dirty: set[str] = set()
        self.sup = Supervisor("chat")
        self._unstored = REGISTRY.counter(
            "tidecast_chat_unstored_dropped_total",
            "Chat messages never stored: the database was away and too many were waiting.",
        )

    async def start(self) -> None:
        sub = self._sub = self.bus.subscribe("chat.>")
        self.sup.spawn("chat-fanout", lambda: consume(sub, self._on_event, bus=self.bus, name="chat"))
        self.sup.spawn("chat-persist", self._flush_loop)

    async def aclose(self) -> None:
        for conns in list(self.local.values()):
            for c in list(conns.values()):
                await self._drop(c, 1001, "server shutting down")
        if self._sub is not None:
            await self._sub.aclose()
        await self.sup.aclose()
        try:
            await self._flush()
        except Exception:
            log.exception("chat: %d messages could not be stored at shutdown", len(self._pending_rows))

    def room(self, stream: str) -> Room:
        r = self.rooms.get(stream)
        if r is None:
            r = self.rooms[stream] = Room(stream, self.limits)
        return r

    # -- bans and timeouts, by identity and address, from the database ------------------------
    async def ensure_loaded(self, stream: str) -> None:
        if stream not in self._loaded:
            await self.reload_sanctions(stream)

    async def reload_sanctions(self, stream: str) -> None:
        if self.sanctions is None:
            self._loaded.add(stream)
            return
        try:
            rows = await asyncio.to_thread(self.sanctions.active, stream, time.time())
        except Exception as exc:  # noqa: BLE001 - kept going on what the room has; read again soon
            log.warning("chat %s: could not read bans from the database: %r", stream, exc)
            return
        room = self.room(stream)
        room.load([(r.kind, r.identity, r.ip, r.until) for r in rows])
        self._loaded.add(stream)
        for c in list(self.local.get(stream, {}).values()):  # banned on another node meanwhile
            m = room.members.get(c.id)
            if m is None or m.identity not in room.banned:
                continue
            if m.ip not in room.banned_ips and self.sanctions is not None:  # only this node knows it
                room.banned_ips.add(m.ip)
                self.sup.run("chat-ban-ips", self._record_addresses(stream, "ban", m.identity, None, {m.ip}))
            self._ban_drop(c)

    async def admit(self, stream: str, ip: str, privileged: bool = False) -> ChatError | None:
        """Why a new socket from ``ip`` may not chat here, or None (``privileged``: it holds a
        moderator's or the streamer's token: address sanctions are not for it)."""
        await self.ensure_loaded(stream)
        if not privileged and self.room(stream).address_banned(ip):
            return ChatError("banned", "your address is banned from this chat")
        return None

    async def _record(self, rows: list[Sanction], stream: str) -> None:
        """Store sanctions; then every node reads the room's again."""
        assert self.sanctions is not None
        await asyncio.to_thread(self.sanctions.add, rows, time.time())
        await self._publish(stream, [{"type": "_sanctions"}])

    async def _record_addresses(self, stream: str, kind: str, ident: str, until: float | None,
                                ips: set[str]) -> None:  # fmt: skip
        try:
            await self._record([Sanction(stream, kind, ident, ip, until) for ip in sorted(ips)], stream)
        except Exception:
            log.exception("chat %s: could not store the %s of %s's address", stream, kind, ident)

    async def revoke(self, stream: str, token_id: str) -> None:
        """Connections that joined with this (now revoked) token leave, on every node."""
        await self._publish(stream, [{"type": "_revoke", "id": token_id}])

    def viewers(self, stream: str) -> int:
        return sum(self.presence.get(stream, {}).values())

    # -- one connection --------------------------------------------------------------
    def connect(self, stream: str, send: SendText, close: CloseFn, raw: RawWrite | None = None) -> Connection:
        conn = Connection(next(self._ids), stream, send, close, asyncio.Queue(self.queue_size), raw=raw)
        conn.writer = self.sup.run(f"chat-writer-{conn.id}", self._writer(conn))
        self.stats.connections += 1
        return conn

    async def handle(self, conn: Connection, frame: str | bytes, *, ip: str,
                     token_identity: tuple[str, str] | None) -> None:  # fmt: skip
        """One client frame; refusals become error events to that client only."""
        room = self.room(conn.stream)
        now = time.time()
        try:
            ev = parse_client_frame(frame)
            if ev.type == "join":
                if conn.joined:
                    raise ChatError("already_joined", "you are already in the room")
                await self.ensure_loaded(conn.stream)
                name, role = token_identity if token_identity else (ev.data.get("name"), "viewer")
                out = room.join(conn.id, name, role, ip)
                conn.joined = True
                self.local.setdefault(conn.stream, {})[conn.id] = conn
                for e in out.reply:
                    e["viewers"] = self.viewers(conn.stream) + 1
                    self._push(conn, dumps(e))
                if len(room.members) <= QUIET_ROOM:  # join/leave lines only in small rooms
                    await self._publish(conn.stream, out.room)
                self._presence_dirty.add(conn.stream)
                return
            if not conn.joined:
                raise ChatError("not_joined", "send a join event first")
            if ev.type == "message":
                out = room.message(conn.id, ev.data.get("text"), now)
                self.stats.messages += 1
                self._persist(conn.stream, out.room[0])
            else:
                out = room.moderate(conn.id, ev.type, ev.data, now)
                for line in out.log:
                    log.info("chat %s: moderation: %s", conn.stream, line)
                if self.sanctions is not None and ev.type in ("ban", "timeout", "unban"):
                    await self._store_moderation(conn.stream, out.room[0], room.members[conn.id].name)
                if ev.type == "delete":
                    await asyncio.to_thread(self.chat_log.delete, str(ev.data["id"]))
            await self._publish(conn.stream, out.room)
        except ChatError as exc:
            self.stats.refused += 1
            self._push(conn, dumps(exc.event()))

    async def _store_moderation(self, stream: str, event: dict[str, Any], by: str) -> None:
        """A ban, timeout or unban is stored before anyone hears of it (it must outlive
        this node); a database that is away refuses the action."""
        assert self.sanctions is not None
        ident = str(event["user"]).casefold()
        try:
            if event["type"] == "unban":
                await asyncio.to_thread(self.sanctions.lift, stream, ident)
                await self._publish(stream, [{"type": "_sanctions"}])
            else:
                until = float(event["until"]) if event["type"] == "timeout" else None
                await self._record([Sanction(stream, event["type"], ident, None, until, by)], stream)
        except Exception as exc:  # noqa: BLE001 - refused to the moderator, who may try again
            log.warning("chat %s: could not store a %s: %r", stream, event["type"], exc)
            raise ChatError("unavailable", "that could not be stored just now; try again") from None

    async def disconnect(self, conn: Connection) -> None:
        self.local.get(conn.stream, {}).pop(conn.id, None)
        # a member leaves the room however the connection went: closed by a ban, a revoked
        # token or a full send queue too (those took it out of ``local`` already)
        was_joined = conn.id in self.room(conn.stream).members
        conn.dead = True
        if conn.writer is not None:
            conn.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await conn.writer
        if was_joined:
            room = self.room(conn.stream)
            out = room.leave(conn.id)
            if len(room.members) < QUIET_ROOM:
                await self._publish(conn.stream, out.room)
            self._presence_dirty.add(conn.stream)

    # -- delivery --------------------------------------------------------------------
    def _push(self, conn: Connection, text: str, frame: bytes | None = None) -> None:
        if conn.dead:
            return
        # fast path: nothing queued or in flight, the socket takes it now -> one write,
        # no task switch (the frame is encoded once for the whole room)
        idle = conn.raw is not None and not conn.sending and conn.queue.empty()
        if idle and conn.raw is not None and conn.raw(frame or text_frame(text)):
            self.stats.direct_writes += 1
            return
        self.stats.queued_writes += 1
        try:
            conn.queue.put_nowait(text)
        except asyncio.QueueFull:
            # a client that does not read: cut it loose, never wait for it
            self.stats.slow_disconnects += 1
            log.warning("chat %s: connection %d is not reading; disconnecting it", conn.stream, conn.id)
            conn.dead = True
            self.local.get(conn.stream, {}).pop(conn.id, None)
            self.sup.run(f"chat-drop-{conn.id}", self._drop(conn, 1008, "too slow: send queue overflow"))

    async def _drop(self, conn: Connection, code: int, reason: str) -> None:
        conn.dead = True
        if conn.writer is not None:
            conn.writer.cancel()
        try:
            await asyncio.wait_for(conn.close(code, reason), 2)
        except (TimeoutError, RuntimeError, OSError, ConnectionError) as exc:
            log.info("chat: closing connection %d: %r", conn.id, exc)
        await self.disconnect(conn)

    async def _writer(self, conn: Connection) -> None:
        while (text := await conn.queue.get()) is not None:
            conn.sending = True
            try:
                await conn.send(text)  # waits while the socket is full
            except (RuntimeError, OSError, ConnectionError) as exc:
                log.info("chat: send to connection %d failed: %r", conn.id, exc)
                return
            finally:
                conn.sending = False

    async def _publish(self, stream: str, events: list[dict[str, Any]]) -> None:
        for e in events:
            await self.bus.publish(f"chat.{stream}", ChatEvent(stream, self.node, e))

    async def _publish_presence(self, stream: str) -> None:
        count = len(self.local.get(stream, {}))
        await self._publish(stream, [{"type": "_presence", "node": self.node, "count": count}])

    async def _on_event(self, d: Delivery) -> None:
        """One room event from the bus (a bad one is dead-lettered by ``consume``)."""
        if isinstance(d.message, ChatEvent):
            self._deliver(d.message)

    def _deliver(self, msg: ChatEvent) -> None:
        event = dict(msg.event)
        room = self.room(msg.stream)
        conns = self.local.get(msg.stream, {})
        kind = event.get("type")
        if kind == "_presence":
            self.presence.setdefault(msg.stream, {})[str(event["node"])] = int(event["count"])  # type: ignore[call-overload]
            event = {"type": "presence", "viewers": self.viewers(msg.stream)}
        elif kind == "_sanctions":  # a node stored some: read the room's again
            self.sup.run(f"chat-sanctions-{msg.stream}", self.reload_sanctions(msg.stream))
            return
        elif kind == "_revoke":
            for c in list(conns.values()):
                if c.extra.get("token_id") == event.get("id"):
                    conns.pop(c.id, None)
                    self._push(c, dumps({"type": "error", "code": "revoked", "message": "your chat token was revoked"}))
                    self.sup.run(f"chat-revoke-{c.id}", self._drop_after_flush(c, 4001, "token revoked"))
            return
        else:
            room.apply(event)
        if kind in ("ban", "timeout"):  # by address too: the addresses of those connected here
            ident = str(event["user"]).casefold()
            ips = {m.ip for m in room.members_of(ident)}
            until = float(str(event["until"])) if kind == "timeout" else None
            if ips:
                if kind == "ban":
                    room.banned_ips |= ips
                else:
                    for ip in ips:
                        room.ip_timeouts[ip] = max(room.ip_timeouts.get(ip, 0.0), until or 0.0)
                if self.sanctions is not None:
                    self.sup.run(f"chat-{kind}-ips", self._record_addresses(msg.stream, kind, ident, until, ips))
            if kind == "ban":  # the banned user's connections here go now (others on the same
                for c in list(conns.values()):  # address stay; a new socket from it is refused)
                    m = room.members.get(c.id)
                    if m is not None and m.identity == ident:
                        self._ban_drop(c)
        text = dumps(event)  # encoded once for every connection
        frame = text_frame(text)
        for c in list(conns.values()):
            self._push(c, text, frame)

    def _ban_drop(self, c: Connection) -> None:
        if self.local.get(c.stream, {}).pop(c.id, None) is None:
            return
        self._push(c, dumps({"type": "error", "code": "banned", "message": "you were banned"}))
        self.sup.run(f"chat-ban-{c.id}", self._drop_after_flush(c))

    async def _drop_after_flush(self, conn: Connection, code: int = 4003, reason: str = "banned") -> None:
        await asyncio.sleep(0.2)  # let the error event go out first
        await self._drop(conn, code, reason)

    # -- persistence -------------------------------------------------------------------
    def _persist(self, stream: str, event: dict[str, Any]) -> None:
        live = self.lookup(stream)
        broadcast, offset = (live[0], round(event["ts"] - live[1], 3)) if live else (None, None)
        self._pending_rows.append(StoredMessage(
            event["id"], stream, broadcast, offset, event["user"], event["role"], event["text"], event["ts"],
        ))  # fmt: skip
        self._bound_unstored()

    def _bound_unstored(self) -> None:
        over = len(self._pending_rows) - MAX_UNSTORED
        if over > 0:
            del self._pending_rows[:over]
            self.stats.unstored_dropped += over
            self._unstored.inc(over)
            log.error("chat: %d messages dropped unstored (the database is away)", over)

    async def _flush(self) -> None:
        rows, self._pending_rows = self._pending_rows, []
        if not rows:
            return
        try:
            await asyncio.to_thread(self.chat_log.add, rows)
        except Exception:
            self._pending_rows[:0] = rows  # keep them for the next try (bounded)
            self._bound_unstored()
            raise

    async def _flush_loop(self) -> None:
        """Store messages in batches, and send coalesced viewer counts."""
        ticks = 0
        while True:
            await asyncio.sleep(0.25)
            ticks += 1
            try:
                await self._flush()
            except Exception:
                log.exception("chat: could not store messages; will retry")
            if ticks % round(PRESENCE_EVERY / 0.25) == 0:
                dirty, self._presence_dirty = self._presence_dirty, set()
                for stream in dirty:
                    await self._publish_presence(stream)
            if ticks % round(SANCTIONS_EVERY / 0.25) == 0:
                for stream in [s for s, conns in self.local.items() if conns]:
                    await self.reload_sanctions(stream)
