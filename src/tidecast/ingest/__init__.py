"""Ingest: protocol servers that accept publishers (RTMP now; SRT/WHIP later).

This package owns the exception shared by every ingest protocol core:
:class:`ProtocolError`, raised when a peer violates its protocol (or one of
our hard limits). Whoever drives a protocol core must close the connection
when it sees one.
"""

from __future__ import annotations

__all__ = ["ProtocolError"]


class ProtocolError(Exception):
    """The peer violated the protocol or exceeded a limit; close the connection."""
