"""Playback tokens and stream passwords.

A playback token lets its holder watch one stream (its live playlists, segments,
parts, keys, recordings and chat) until it expires::

    token = "<expires>.<hash>"
    hash  = base64url(md5("<expires>/hls/<stream>/ <secret>")), no padding

It is built for nginx's ``secure_link`` module, so an edge verifies it without
asking the origin (``tidecast.edge.nginx``)::

    secure_link $hash,$expires;
    secure_link_md5 "$expires/hls/$stream/ <secret>";

(``secure_link_md5`` can only do MD5 over a string with the secret in it: stock
nginx has no HMAC. The secret comes last, so MD5's length extension does not
apply; the hashed string is fixed in shape — digits, then ``/hls/``, a stream
name of ``[a-z0-9_-]`` and ``/`` — so there is no chosen-prefix room either.)

A token travels in one of two places:

- the path: ``/hls/<stream>/~<token>/master.m3u8``. Playlists name their objects
  relative to themselves, so every child URI (media playlists, init segments,
  segments, parts, keys, preload hints, rendition reports) carries the token
  with no rewriting, and every viewer gets the same playlist bytes — which an
  edge caches once. This is the URL for plain players (ffprobe, VLC, mpv).
- a cookie ``tidecast_play`` with ``Path=/hls/<stream>/`` (and ``/chat/<stream>``),
  which the watch page gets in exchange for the stream's password; and
  ``tidecast_play_<stream>`` with ``Path=/api/v1/`` (downloads, chat replay).

Stream passwords are kept as scrypt hashes (``hashlib.scrypt``, salted).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

COOKIE = "tidecast_play"
PATH_MARK = "~"  # a path segment "~<token>" right after /hls/<stream>/
MAX_TTL = 366 * 86400.0
_TOKEN = re.compile(r"^(\d{1,12})\.([A-Za-z0-9_-]{22})$")
_SECRET = re.compile(r"^[A-Za-z0-9_.-]{16,200}$")


class BadSecret(ValueError):
    """A playback secret nginx's config could not carry as it is."""


def check_secret(secret: str) -> str:
    if not _SECRET.match(secret):
        raise BadSecret(
            "playback_secret must be 16-200 characters of letters, digits, '.', '_' or '-'"
        )
    return secret


def _digest(secret: str, stream: str, expires: int) -> str:
    raw = hashlib.md5(f"{expires}/hls/{stream}/ {secret}".encode(), usedforsecurity=False).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def issue(secret: str, stream: str, expires: float) -> str:
    """A token for ``stream`` valid until ``expires`` (epoch seconds, rounded down)."""
    return f"{int(expires)}.{_digest(secret, stream, int(expires))}"


@dataclass(frozen=True, slots=True)
class Checked:
    ok: bool
    reason: str = ""  # why not: "malformed", "expired", "wrong"
    expires: int = 0


def verify(secret: str, token: str, stream: str, now: float) -> Checked:
    """Whether ``token`` is a live token for ``stream`` (nginx's ``secure_link`` rule:
    expired once ``expires`` is in the past)."""
    m = _TOKEN.match(token)
    if m is None:
        return Checked(False, "malformed")
    expires = int(m.group(1))
    if not hmac.compare_digest(m.group(2), _digest(secret, stream, expires)):
        return Checked(False, "wrong")  # forged, or another stream's
    if expires < int(now):
        return Checked(False, "expired", expires)
    return Checked(True, expires=expires)


def split_path(path: str) -> tuple[str | None, str]:
    """``<stream>/~<token>/rest`` (a path below /hls/) -> (token, ``<stream>/rest``);
    a path without a token segment -> (None, path). An empty ``~`` segment is a
    token too (a malformed one)."""
    stream, sep, rest = path.partition("/")
    if not sep or not rest.startswith(PATH_MARK):
        return None, path
    token, sep, tail = rest[len(PATH_MARK) :].partition("/")
    if not sep:
        return token, stream  # "/hls/s/~tok" names nothing; the caller 404s
    return token, f"{stream}/{tail}"


def tokenized_path(stream: str, token: str, rest: str) -> str:
    """The URL path of ``hls/<stream>/<rest>`` carrying ``token``."""
    return f"/hls/{stream}/{PATH_MARK}{token}/{rest}"


def cookie_tokens(header: str, stream: str) -> list[str]:
    """Every playback token a ``Cookie`` header offers for ``stream``: the media
    cookie (``tidecast_play``; a browser may send several with that name) and the
    API one (``tidecast_play_<stream>``)."""
    if not header or COOKIE not in header:
        return []
    out: list[str] = []
    wanted = (COOKIE, f"{COOKIE}_{stream}")
    for piece in header.split(";"):
        name, sep, value = piece.strip().partition("=")
        if sep and name in wanted and value:
            out.append(value.strip().strip('"'))
    return out


def set_cookie_headers(stream: str, token: str, max_age: int, secure: bool = False) -> list[str]:
    """``Set-Cookie`` values that carry ``token`` to what the browser player asks for."""
    out = []
    for name, path in ((COOKIE, f"/hls/{stream}/"), (COOKIE, f"/chat/{stream}"),
                       (f"{COOKIE}_{stream}", "/api/v1/")):  # fmt: skip
        c: SimpleCookie = SimpleCookie()
        try:
            c[name] = token
        except CookieError as exc:  # stream names are cookie-safe; this would be a bug
            raise ValueError(f"cannot put a token in cookie {name!r}: {exc}") from exc
        morsel = c[name]
        morsel["path"] = path
        morsel["max-age"] = str(max_age)
        morsel["httponly"] = True
        morsel["samesite"] = "Lax"
        if secure:
            morsel["secure"] = True
        out.append(morsel.OutputString())
    return out


# ---------------------------------------------------------------- passwords

_SCRYPT = {"n": 1 << 14, "r": 8, "p": 1}  # ~16 MiB, ~50 ms: OWASP's scrypt minimum
MAX_PASSWORD = 256


def hash_password(password: str) -> str:
    """``scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>``."""
    if not 1 <= len(password) <= MAX_PASSWORD:
        raise ValueError(f"a password must be 1-{MAX_PASSWORD} characters")
    salt = secrets.token_bytes(16)
    h = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${h.hex()}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (a ``hash_password`` string)."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or not 1 <= len(password) <= MAX_PASSWORD:
        return False
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, want = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
        got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(want),
                             maxmem=128 * n * r * p + (1 << 20))  # fmt: skip
    except ValueError:
        return False
    return hmac.compare_digest(got, want)
