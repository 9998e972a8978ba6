"""Live status: which broadcast each stream has live, as the origin and chat need it.

``LiveStatus`` is owned by its consumers (the HTTP app, chat, recordings API)
and implemented by whoever knows: the ingest's ``PublishGate`` in ``tidecast
serve`` (its own publishers), or ``LiveDirectory`` in the origin role (open
broadcasts read from the database). A broadcast whose publisher left less than
the reconnect grace ago is still live (``paused``): it may resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class LiveBroadcast:
    stream: str
    broadcast: str
    started_at: float  # wall clock, epoch seconds
    video: str = ""  # e.g. "avc1.64001f 1920x1080"
    audio: str = ""
    paused: bool = False  # the publisher left; the grace period has not run out


class LiveStatus(Protocol):
    def live(self) -> Mapping[str, LiveBroadcast]:
        """Live (and paused) broadcasts by stream name."""
        ...


def live_broadcast_ids(status: LiveStatus) -> set[str]:
    return {b.broadcast for b in status.live().values()}
