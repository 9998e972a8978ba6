"""The chat wire protocol: JSON text frames, one event per frame, a ``type`` field.

Client -> server::

    {"type": "join", "name": "alice"}            first frame (skip the name with a token)
    {"type": "message", "text": "hello"}
    {"type": "delete", "id": "m1f3..."}          moderators and the streamer
    {"type": "timeout", "user": "bob", "seconds": 60}
    {"type": "ban", "user": "bob"}  /  {"type": "unban", "user": "bob"}
    {"type": "slow", "seconds": 5}               0 turns slow mode off

Server -> client::

    {"type": "welcome", "you": {"name", "role"}, "history": [message...], "slow": s, "viewers": n}
    {"type": "message", "id", "user", "role", "text", "ts"}     ts: epoch seconds
    {"type": "join" | "leave", "user"}  {"type": "presence", "viewers": n}
    {"type": "delete", "id"}  {"type": "timeout", "user", "seconds"}  {"type": "ban", "user"}
    {"type": "unban", "user"}  {"type": "slow", "seconds"}  {"type": "notice", "text"}
    {"type": "error", "code", "message"}         only to the client whose action was refused

Text is text: the server never builds markup from user input, and refuses
control characters; clients must render names and messages as text.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any

MAX_FRAME = 4096  # bytes of one client frame
MAX_TEXT = 500  # characters of one message
MAX_NAME = 32

CLIENT_TYPES = {"join", "message", "delete", "timeout", "ban", "unban", "slow"}


class ChatError(Exception):
    """A refused client action: becomes an ``error`` event to that client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def event(self) -> dict[str, Any]:
        return {"type": "error", "code": self.code, "message": self.message}


def has_control_chars(text: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co") for c in text)


def check_text(text: object) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ChatError("empty", "a message needs some text")
    if len(text) > MAX_TEXT:
        raise ChatError("too_long", f"messages are at most {MAX_TEXT} characters")
    if has_control_chars(text):
        raise ChatError("control_chars", "control characters are not allowed")
    return text.strip()


def check_name(name: object) -> str:
    if not isinstance(name, str):
        raise ChatError("bad_name", "a name is required")
    name = " ".join(name.split())  # no leading, trailing or repeated white space
    if not 1 <= len(name) <= MAX_NAME or has_control_chars(name):
        raise ChatError("bad_name", f"names are 1-{MAX_NAME} printable characters")
    return name


@dataclass(frozen=True, slots=True)
class ClientEvent:
    type: str
    data: dict[str, Any]


def parse_client_frame(frame: str | bytes) -> ClientEvent:
    """One client frame -> event, or ChatError for anything malformed."""
    if isinstance(frame, bytes):
        raise ChatError("binary", "send JSON text frames")
    if len(frame.encode()) > MAX_FRAME:
        raise ChatError("too_large", f"frames are at most {MAX_FRAME} bytes")
    try:
        data = json.loads(frame)
    except ValueError:
        raise ChatError("bad_json", "frames are JSON objects") from None
    if not isinstance(data, dict) or data.get("type") not in CLIENT_TYPES:
        raise ChatError("bad_type", f"type must be one of {', '.join(sorted(CLIENT_TYPES))}")
    return ClientEvent(str(data["type"]), data)


def dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))
