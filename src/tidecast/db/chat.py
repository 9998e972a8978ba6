"""Chat in the database: messages (written in small batches off the event loop), bans
and timeouts by identity and address (``ChatSanctions``, read by every node), and
revoked chat tokens."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select, update

from tidecast.db.models import ChatMessage, ChatSanction, RevokedChatToken
from tidecast.db.repo import Database


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: str
    stream: str
    broadcast: str | None
    offset: float | None
    user: str
    role: str
    text: str
    ts: float


class ChatLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, rows: list[StoredMessage]) -> None:
        with self.db.session() as s:
            s.add_all(ChatMessage(id=r.id, stream=r.stream, broadcast_id=r.broadcast, offset=r.offset,
                                  user=r.user, role=r.role, text=r.text, ts=r.ts) for r in rows)  # fmt: skip
            s.commit()

    def delete(self, message_id: str) -> None:
        with self.db.session() as s:
            s.execute(update(ChatMessage).where(ChatMessage.id == message_id).values(deleted=True))
            s.commit()

    def for_broadcast(self, broadcast: str) -> list[StoredMessage]:
        with self.db.session() as s:
            rows = s.scalars(select(ChatMessage).where(ChatMessage.broadcast_id == broadcast,
                                                       ChatMessage.deleted.is_(False))
                             .order_by(ChatMessage.ts))  # fmt: skip
            return [StoredMessage(r.id, r.stream, r.broadcast_id, r.offset, r.user, r.role, r.text, r.ts)
                    for r in rows]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Sanction:
    stream: str
    kind: str  # ban | timeout
    identity: str  # casefolded name
    ip: str | None = None
    until: float | None = None  # epoch seconds; None: until lifted
    by: str = ""


class ChatSanctions:
    """Bans and timeouts: written by the node that acts (or that saw the user's address),
    read by every node, so they hold across nodes and restarts."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, rows: list[Sanction], now: float) -> None:
        with self.db.session() as s:
            s.add_all(ChatSanction(stream=r.stream, kind=r.kind, identity=r.identity, ip=r.ip, until=r.until,
                                   created_at=now, by=r.by) for r in rows)  # fmt: skip
            s.commit()

    def lift(self, stream: str, identity: str) -> int:
        """Unban: every ban of ``identity`` goes, with the addresses banned along with it."""
        with self.db.session() as s:
            n = s.execute(delete(ChatSanction).where(
                ChatSanction.stream == stream, ChatSanction.kind == "ban", ChatSanction.identity == identity))  # fmt: skip
            s.commit()
            return int(getattr(n, "rowcount", 0) or 0)

    def active(self, stream: str, now: float) -> list[Sanction]:
        """What holds now; expired timeouts are removed on the way."""
        with self.db.session() as s:
            s.execute(delete(ChatSanction).where(ChatSanction.until.is_not(None), ChatSanction.until < now))
            rows = s.scalars(select(ChatSanction).where(ChatSanction.stream == stream).order_by(ChatSanction.id))
            out = [Sanction(r.stream, r.kind, r.identity, r.ip, r.until, r.by) for r in rows]
            s.commit()
            return out

    def revoke_token(self, token_id: str, expires: float) -> None:
        with self.db.session() as s:
            if s.get(RevokedChatToken, token_id) is None:
                s.add(RevokedChatToken(token_id=token_id, expires=expires))
            s.commit()

    def token_revoked(self, token_id: str, now: float) -> bool:
        with self.db.session() as s:
            s.execute(delete(RevokedChatToken).where(RevokedChatToken.expires < now))
            hit = s.scalar(select(RevokedChatToken.token_id).where(RevokedChatToken.token_id == token_id))
            s.commit()
            return hit is not None
