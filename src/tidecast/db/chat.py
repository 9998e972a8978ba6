"""Chat messages in the database, written in small batches off the event loop."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update

from tidecast.db.models import ChatMessage
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
