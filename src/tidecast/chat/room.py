"""One chat room's rules, sans-I/O: who is in, who may say what, and when.

Methods take the current time and return ``Outcome``: events for the whole room
(fanned out through the bus by the hub), events for the acting connection only,
and connections to close (a ban). Room-wide history is applied from events as
they come back from the bus (``apply``), so every node keeps the same history.

Bans and timeouts hold by identity and by address. The database keeps them
(``db/chat.py``); ``load`` puts what it holds into the room (at start, and
whenever a node records one), ``apply`` adds an identity's at once.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tidecast.chat.protocol import ChatError, check_name, check_text

ROLES = ("viewer", "moderator", "streamer")


@dataclass(frozen=True, slots=True)
class ChatLimits:
    history: int = 50  # messages a joining client receives
    per_connection_burst: int = 5  # messages, refilled at per_connection_rate/s
    per_connection_rate: float = 1.0
    per_ip_burst: int = 20
    per_ip_rate: float = 4.0
    blocked_words: tuple[str, ...] = ()


@dataclass(slots=True)
class TokenBucket:
    capacity: float
    rate: float
    tokens: float = -1.0
    at: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.at = self.capacity, now
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass(slots=True)
class Member:
    conn: int
    name: str
    role: str
    ip: str
    bucket: TokenBucket

    @property
    def identity(self) -> str:
        return self.name.casefold()

    @property
    def is_mod(self) -> bool:
        return self.role in ("moderator", "streamer")


@dataclass(slots=True)
class Outcome:
    room: list[dict[str, Any]] = field(default_factory=list)
    reply: list[dict[str, Any]] = field(default_factory=list)
    close: list[int] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # moderation actions, for the log


class Room:
    def __init__(self, name: str, limits: ChatLimits | None = None) -> None:
        self.name = name
        self.limits = limits or ChatLimits()
        self.members: dict[int, Member] = {}
        self.history: deque[dict[str, Any]] = deque(maxlen=self.limits.history)
        self.banned: set[str] = set()
        self.timeouts: dict[str, float] = {}
        self.banned_ips: set[str] = set()
        self.ip_timeouts: dict[str, float] = {}
        self.slow = 0
        self.last_message: dict[str, float] = {}
        self.ip_buckets: dict[str, TokenBucket] = {}

    # -- membership ----------------------------------------------------------------
    def join(self, conn: int, name: object, role: str, ip: str) -> Outcome:
        name = check_name(name)
        ident = name.casefold()
        if ident in self.banned:
            raise ChatError("banned", f"{name} is banned from this chat")
        if ip in self.banned_ips and role == "viewer":  # moderators are known by their token
            raise ChatError("banned", "your address is banned from this chat")
        if any(m.identity == ident for m in self.members.values()):
            raise ChatError("name_taken", f"someone is already chatting as {name}")
        if role not in ROLES:
            raise ChatError("bad_role", f"unknown role {role!r}")
        lim = self.limits
        self.members[conn] = Member(conn, name, role, ip,
                                    TokenBucket(lim.per_connection_burst, lim.per_connection_rate))  # fmt: skip
        welcome = {
            "type": "welcome", "you": {"name": name, "role": role},
            "history": list(self.history), "slow": self.slow,
        }  # fmt: skip
        return Outcome(room=[{"type": "join", "user": name}], reply=[welcome])

    def leave(self, conn: int) -> Outcome:
        m = self.members.pop(conn, None)
        return Outcome(room=[{"type": "leave", "user": m.name}]) if m else Outcome()

    # -- messages ------------------------------------------------------------------
    def message(self, conn: int, text: object, now: float) -> Outcome:
        m = self._member(conn)
        text = check_text(text)
        until = max(self.timeouts.get(m.identity, 0.0), 0.0 if m.is_mod else self.ip_timeouts.get(m.ip, 0.0))
        if until > now:
            raise ChatError("timed_out", f"you are timed out for {until - now:.0f} more seconds")
        if m.role != "streamer":
            if not m.bucket.take(now):
                raise ChatError("rate_limited", "you are sending messages too fast")
            ip_bucket = self.ip_buckets.setdefault(
                m.ip, TokenBucket(self.limits.per_ip_burst, self.limits.per_ip_rate)
            )
            if not ip_bucket.take(now):
                raise ChatError("rate_limited", "too many messages from your network")
        if self.slow and not m.is_mod:
            last = self.last_message.get(m.identity)
            if last is not None and now - last < self.slow:
                raise ChatError("slow_mode", f"slow mode: one message every {self.slow} s")
        lowered = text.casefold()
        for word in self.limits.blocked_words:
            if word.casefold() in lowered:
                raise ChatError("blocked_word", "that message contains a blocked word")
        self.last_message[m.identity] = now
        event = {"type": "message", "id": "m" + secrets.token_hex(6), "user": m.name,
                 "role": m.role, "text": text, "ts": round(now, 3)}  # fmt: skip
        return Outcome(room=[event])

    # -- moderation ----------------------------------------------------------------
    def moderate(self, conn: int, kind: str, data: dict[str, Any], now: float) -> Outcome:
        m = self._member(conn)
        if not m.is_mod:
            raise ChatError("forbidden", f"only moderators can {kind}")
        if kind == "delete":
            mid = data.get("id")
            if not isinstance(mid, str) or not any(h["id"] == mid for h in self.history):
                raise ChatError("not_found", "no such message")
            return Outcome(room=[{"type": "delete", "id": mid}], log=[f"{m.name} deleted {mid}"])
        if kind == "slow":
            seconds = data.get("seconds")
            if not isinstance(seconds, int) or not 0 <= seconds <= 3600:
                raise ChatError("bad_value", "slow mode takes 0..3600 seconds")
            return Outcome(room=[{"type": "slow", "seconds": seconds}], log=[f"{m.name} set slow mode {seconds}"])
        user = data.get("user")
        if not isinstance(user, str) or not user:
            raise ChatError("bad_value", "name the user")
        ident = user.casefold()
        target = [x for x in self.members.values() if x.identity == ident]
        if any(t.role == "streamer" for t in target) or (target and target[0].is_mod and m.role != "streamer"):
            raise ChatError("forbidden", f"you cannot {kind} {user}")
        if kind == "timeout":
            seconds = data.get("seconds", 60)
            if not isinstance(seconds, int) or not 1 <= seconds <= 7 * 86400:
                raise ChatError("bad_value", "a timeout is 1 s to 7 days")
            return Outcome(room=[{"type": "timeout", "user": user, "seconds": seconds, "until": now + seconds}],
                           log=[f"{m.name} timed out {user} for {seconds} s"])  # fmt: skip
        if kind == "ban":
            return Outcome(room=[{"type": "ban", "user": user}], close=[t.conn for t in target],
                           log=[f"{m.name} banned {user}"])  # fmt: skip
        if kind == "unban":
            return Outcome(room=[{"type": "unban", "user": user}], log=[f"{m.name} unbanned {user}"])
        raise ChatError("bad_type", f"unknown action {kind}")

    # -- state from room events (as they come back through the bus) -------------------
    def apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message":
            self.history.append(event)
        elif kind == "delete":
            self.history = deque((h for h in self.history if h["id"] != event["id"]), maxlen=self.history.maxlen)
        elif kind == "slow":
            self.slow = int(event["seconds"])
        elif kind == "timeout":
            self.timeouts[str(event["user"]).casefold()] = float(event["until"])
        elif kind == "ban":
            self.banned.add(str(event["user"]).casefold())
        elif kind == "unban":
            self.banned.discard(str(event["user"]).casefold())

    def load(self, sanctions: list[tuple[str, str, str | None, float | None]]) -> None:
        """Every ban and timeout the database holds for this room, as (kind, identity,
        address or None, until or None); they replace what the room had."""
        self.banned, self.timeouts, self.banned_ips, self.ip_timeouts = set(), {}, set(), {}
        for kind, ident, ip, until in sanctions:
            if kind == "ban":
                self.banned.add(ident)
                if ip:
                    self.banned_ips.add(ip)
            elif kind == "timeout" and until is not None:
                self.timeouts[ident] = max(self.timeouts.get(ident, 0.0), until)
                if ip:
                    self.ip_timeouts[ip] = max(self.ip_timeouts.get(ip, 0.0), until)

    def address_banned(self, ip: str) -> bool:
        return ip in self.banned_ips

    def members_of(self, identity: str) -> list[Member]:
        return [m for m in self.members.values() if m.identity == identity]

    def _member(self, conn: int) -> Member:
        m = self.members.get(conn)
        if m is None:
            raise ChatError("not_joined", "join first")
        return m
