"""Who may watch each stream, and which broadcasts are encrypted (synchronous queries).

``access``: ``public`` (anyone), ``token`` (a playback token), ``password`` (a
token, which the stream's password gets); ``encryption``: ``none`` or ``aes-128``
for the broadcasts that start from then on (``Recordings.start`` gives such a
broadcast its key seed); ``latency``: "" (the node's ``ll_hls``), ``low`` or
``standard``, also for the broadcasts that start from then on.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from tidecast.db.models import Broadcast, Stream
from tidecast.db.recordings import BroadcastNotFound
from tidecast.db.repo import Database, StreamNotFound

ACCESS_MODES = ("public", "token", "password")
ENCRYPTION_METHODS = ("none", "aes-128")
LATENCIES = ("", "low", "standard")


def low_latency(latency: str, encryption: str, node_default: bool) -> bool:
    """Whether a stream's broadcasts get LL-HLS parts: on a node with ``ll_hls`` on, unless
    the stream says "standard" or is encrypted (AES-128 encrypts whole segments)."""
    return node_default and latency != "standard" and encryption != "aes-128"


@dataclass(frozen=True, slots=True)
class Policy:
    stream: str
    access: str
    password_hash: str
    encryption: str
    latency: str = ""


@dataclass(frozen=True, slots=True)
class BroadcastKeys:
    stream: str
    seed: str  # "" = in the clear


def _policy(row: Stream) -> Policy:
    return Policy(row.name, row.access, row.password_hash, row.encryption, row.latency or "")


class Playback:
    def __init__(self, db: Database) -> None:
        self.db = db

    def policy(self, name: str) -> Policy:
        with self.db.session() as s:
            row = s.scalar(select(Stream).where(Stream.name == name))
            if row is None:
                raise StreamNotFound(name)
            return _policy(row)

    def set_policy(
        self, name: str, *, access: str | None = None, password_hash: str | None = None,
        encryption: str | None = None, latency: str | None = None,
    ) -> Policy:  # fmt: skip
        """Change what is given (``password_hash`` "" clears it); a password stream
        needs a password."""
        if access is not None and access not in ACCESS_MODES:
            raise ValueError(f"access must be one of {', '.join(ACCESS_MODES)}")
        if encryption is not None and encryption not in ENCRYPTION_METHODS:
            raise ValueError(f"encryption must be one of {', '.join(ENCRYPTION_METHODS)}")
        if latency is not None and latency not in LATENCIES:
            raise ValueError("latency must be low, standard or empty (the node's default)")
        with self.db.session() as s:
            row = s.scalar(select(Stream).where(Stream.name == name).with_for_update())
            if row is None:
                raise StreamNotFound(name)
            if access is not None:
                row.access = access
            if password_hash is not None:
                row.password_hash = password_hash
            if encryption is not None:
                row.encryption = encryption
            if latency is not None:
                row.latency = latency
            if row.access == "password" and not row.password_hash:
                s.rollback()
                raise ValueError('access "password" needs a password')
            s.commit()
            return _policy(row)

    def broadcast_keys(self, broadcast: str) -> BroadcastKeys:
        with self.db.session() as s:
            row = s.execute(
                select(Stream.name, Broadcast.key_seed)
                .join(Stream, Stream.id == Broadcast.stream_id)
                .where(Broadcast.id == broadcast)
            ).first()
            if row is None:
                raise BroadcastNotFound(broadcast)
            return BroadcastKeys(row[0], row[1])
