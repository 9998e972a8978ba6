"""Errors raised by the media layer.

This module owns :class:`MediaError`, the single exception type the codec and
container helpers (``h264``, ``aac``, ``fmp4``) raise for malformed media or
configuration data. It subclasses :class:`ValueError` so callers that only care
about "bad input" can catch either.
"""

from __future__ import annotations


class MediaError(ValueError):
    """Malformed or unsupported media data (bitstream, codec config or container)."""
