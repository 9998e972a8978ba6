"""SQLAlchemy models. Stream keys are stored only as SHA-256 digests."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: tidecast stores UTC-aware times only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Stream(Base):
    __tablename__ = "streams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    title: Mapped[str] = mapped_column(String(200), default="")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    recording: Mapped[bool] = mapped_column(Boolean, default=True)
    retention_mode: Mapped[str] = mapped_column(String(10), default="forever")  # forever|days|count
    retention_value: Mapped[int] = mapped_column(Integer, default=0)
    # who may publish, on top of the global lists: CIDRs separated by spaces
    ingest_allow: Mapped[str] = mapped_column(String(4000), server_default="")
    ingest_deny: Mapped[str] = mapped_column(String(4000), server_default="")
    # who may watch (and chat, and see recordings): public | token | password
    access: Mapped[str] = mapped_column(String(10), default="public", server_default="public")
    password_hash: Mapped[str] = mapped_column(String(200), default="", server_default="")
    # HLS encryption of the broadcasts that start from now on: none | aes-128
    encryption: Mapped[str] = mapped_column(String(10), default="none", server_default="none")
    # broadcasts that start from now on: "" = the node's default (ll_hls), low | standard
    latency: Mapped[str] = mapped_column(String(10), default="", server_default="")
    broadcasts: Mapped[list[Broadcast]] = relationship(back_populates="stream")


class Broadcast(Base):
    __tablename__ = "broadcasts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    stream_id: Mapped[int] = mapped_column(ForeignKey("streams.id"), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    end_reason: Mapped[str] = mapped_column(String(40), default="")
    title: Mapped[str] = mapped_column(String(200), default="")
    parts: Mapped[int] = mapped_column(Integer, default=1)  # publisher sessions (reconnects + 1)
    duration: Mapped[float] = mapped_column(Float, default=0.0)
    size: Mapped[int] = mapped_column(Integer, default=0)
    renditions: Mapped[str] = mapped_column(String(200), default="")  # comma-separated
    recorded: Mapped[bool] = mapped_column(Boolean, default=True)
    vod_ready: Mapped[bool] = mapped_column(Boolean, default=False)
    # segments listed as EXT-X-GAP, and segments re-made after a gap (their rows say which)
    gaps: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    healed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # AES-128: the seed of this broadcast's keys (hex); "" = in the clear. Set when it
    # starts, from its stream's encryption, and kept: its VOD keeps its keys
    key_seed: Mapped[str] = mapped_column(String(64), default="", server_default="")
    stream: Mapped[Stream] = relationship(back_populates="broadcasts")


class RecordedSegment(Base):
    """One listed segment of one rendition: enough to rebuild every VOD playlist."""

    __tablename__ = "segments"
    __table_args__ = (UniqueConstraint("broadcast_id", "rendition", "sequence"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    broadcast_id: Mapped[str] = mapped_column(ForeignKey("broadcasts.id"), index=True)
    rendition: Mapped[str] = mapped_column(String(40))
    sequence: Mapped[int] = mapped_column(Integer)
    part: Mapped[int] = mapped_column(Integer, default=0)
    start: Mapped[float] = mapped_column(Float)  # media time, seconds
    duration: Mapped[float] = mapped_column(Float)
    init_key: Mapped[str] = mapped_column(String(300))
    segment_key: Mapped[str] = mapped_column(String(300))
    size: Mapped[int] = mapped_column(Integer)
    gap: Mapped[bool] = mapped_column(Boolean, default=False)
    codecs: Mapped[str] = mapped_column(String(100), default="")
    width: Mapped[int] = mapped_column(Integer, default=0)
    height: Mapped[int] = mapped_column(Integer, default=0)
    frame_rate: Mapped[float] = mapped_column(Float, default=0.0)
    program_date_time: Mapped[float] = mapped_column(Float, default=0.0)
    # first recorded as a gap (or not at all), then re-made: the record of what healed
    healed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Clip(Base):
    """A time range of a broadcast, played on its own (no re-encode: whole segments)."""

    __tablename__ = "clips"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    broadcast_id: Mapped[str] = mapped_column(ForeignKey("broadcasts.id"), index=True)
    title: Mapped[str] = mapped_column(String(200), default="")
    first_sequence: Mapped[int] = mapped_column(Integer)
    last_sequence: Mapped[int] = mapped_column(Integer)
    duration: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ChatMessage(Base):
    """A chat message, kept with the broadcast it was sent during (for replay)."""

    __tablename__ = "chat_messages"

    id: Mapped[str] = mapped_column(String(20), primary_key=True)
    stream: Mapped[str] = mapped_column(String(64), index=True)
    broadcast_id: Mapped[str | None] = mapped_column(String(40), index=True, nullable=True)
    # seconds from the broadcast's start
    offset: Mapped[float | None] = mapped_column(Float, nullable=True)
    user: Mapped[str] = mapped_column(String(40))
    role: Mapped[str] = mapped_column(String(12))
    text: Mapped[str] = mapped_column(String(2000))
    ts: Mapped[float] = mapped_column(Float)  # wall clock, epoch seconds
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class ChatSanction(Base):
    """A chat ban or timeout, by identity (the casefolded name) and, where the node that
    saw the user knew it, by address too. ``until`` None: until lifted (a ban)."""

    __tablename__ = "chat_sanctions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stream: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(10))  # ban | timeout
    identity: Mapped[str] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    until: Mapped[float | None] = mapped_column(Float, nullable=True)  # epoch seconds
    created_at: Mapped[float] = mapped_column(Float)
    by: Mapped[str] = mapped_column(String(64), default="")


class RevokedChatToken(Base):
    """A chat token that no longer works, kept until it would have expired anyway."""

    __tablename__ = "chat_token_revocations"

    token_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    expires: Mapped[float] = mapped_column(Float)  # epoch seconds


class Lease(Base):
    """A named, expiring claim (e.g. "packager/<stream>": one packager per stream).

    ``epoch`` is a fencing token: it grows each time the holder changes, so work
    stamped with an older epoch can be told apart from the current holder's.
    ``expires_at`` is epoch seconds on the database's clock, the one clock every
    holder's claim is judged on (``tidecast.db.leases``).
    """

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    holder: Mapped[str] = mapped_column(String(100))
    epoch: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[float] = mapped_column(Float)
