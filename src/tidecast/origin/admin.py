"""The admin API token and the chat token secret: from the shared setting, or made once
and kept in the data dir (mode 0600)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from tidecast.config import Settings

ADMIN_TOKEN_FILE = "admin-token"


def load_or_create_admin_token(data_dir: Path) -> tuple[str, bool]:
    """The data dir's admin token, and whether it was just made."""
    path = data_dir / ADMIN_TOKEN_FILE
    if path.is_file():
        token = path.read_text().strip()
        if token:
            return token, False
    token = "adm_" + secrets.token_urlsafe(24)
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


def load_or_create_secret(data_dir: Path, name: str) -> bytes:
    """A random secret kept in the data dir (mode 0600), made on first use."""
    path = data_dir / name
    if path.is_file() and path.stat().st_size >= 32:
        return path.read_bytes()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
    return secret


def admin_secrets(settings: Settings) -> tuple[str, bytes]:
    """(admin token, chat token secret): from the shared setting, or the data dir's."""
    if settings.admin_token:
        token = settings.admin_token
        return token, hmac.new(token.encode(), b"tidecast chat tokens", hashlib.sha256).digest()
    token, _ = load_or_create_admin_token(settings.data_dir)
    return token, load_or_create_secret(settings.data_dir, "chat-secret")


def ingest_token_secret(settings: Settings) -> bytes:
    """The HS256 secret of the ingest tokens tidecast issues: derived from the shared
    admin token (every node of a deployment has it), else kept in the data dir."""
    if settings.admin_token:
        return hmac.new(settings.admin_token.encode(), b"tidecast ingest tokens", hashlib.sha256).digest()
    return load_or_create_secret(settings.data_dir, "ingest-secret")
def playback_secret(settings: Settings) -> str:
    """The playback token secret (``access.tokens``): the setting, else derived from the
    shared admin token, else made once and kept in the data dir. Letters and digits
    only: nginx's edge config carries it as it is."""
    if settings.playback_secret:
        return settings.playback_secret
    if settings.admin_token:
        return hmac.new(settings.admin_token.encode(), b"tidecast playback tokens", hashlib.sha256).hexdigest()
    return load_or_create_secret(settings.data_dir, "playback-secret").hex()
