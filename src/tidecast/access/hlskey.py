"""HLS AES-128 (RFC 8216 4.3.2.4, 5.2): keys, segment encryption, EXT-X-KEY tags.

A broadcast of a stream with ``encryption = "aes-128"`` gets a random 16-byte
seed when it starts (kept in its database row, so its VOD keeps its keys). Its
key number ``k`` is ``HMAC-SHA256(seed, "tidecast hls key <k>")[:16]``; segment
``n`` is encrypted with key ``n // rotation`` (a new key every ``rotation``
segments), as the whole file in AES-128-CBC with PKCS#7 padding and the IV
``n`` as a 128-bit big-endian number — the IV a player takes when EXT-X-KEY has
none and the segment's media sequence number is ``n``.

The store keeps media in the clear (recordings, downloads and healing read it
as they are): the origin encrypts a segment as it serves it, and adds the
EXT-X-KEY tags to the playlists it serves (``add_key_tags``). Init segments stay
in the clear (an ``EXT-X-KEY:METHOD=NONE`` goes before any EXT-X-MAP that
would otherwise fall under a key), which hls.js and ffmpeg both read: hls.js
decrypts a whole fMP4 segment before it demuxes it, as it does for TS.

Key URIs are ``hls/<stream>/<broadcast>/keys/<k>.key``, relative to the playlist
like every other URI, so a token in the path reaches them too.

LL-HLS parts are not encrypted: a part of an encrypted segment would have to
be an encrypted object of its own (own padding, and CBC with the segment's IV
once per part), and the segment's bytes would no longer be its parts' bytes.
A playlist with encrypted segments is served without parts (no EXT-X-PART,
PART-INF, PRELOAD-HINT, RENDITION-REPORT nor PART-HOLD-BACK); its parts are not
served (404). The API refuses AES-128 for a stream while ``ll_hls`` is on.
"""

from __future__ import annotations

import hashlib
import hmac
import posixpath
import re
import secrets
from collections.abc import Mapping

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tidecast import keys

METHODS = ("none", "aes-128")
_SKIP = re.compile(r"SKIPPED-SEGMENTS=(\d+)")
_PART_LINES = (
    "#EXT-X-PART:",
    "#EXT-X-PART-INF:",
    "#EXT-X-PRELOAD-HINT:",
    "#EXT-X-RENDITION-REPORT:",
)


def new_seed() -> str:
    return secrets.token_hex(16)


def key_for(seed: str, index: int) -> bytes:
    """Key number ``index`` of the broadcast whose seed (hex) is ``seed``."""
    return hmac.new(
        bytes.fromhex(seed), f"tidecast hls key {index}".encode(), hashlib.sha256
    ).digest()[:16]


def iv_for(sequence: int) -> bytes:
    return sequence.to_bytes(16, "big")


def encrypt(data: bytes, key: bytes, iv: bytes) -> bytes:
    """The whole object in AES-128-CBC, PKCS#7 padded (RFC 8216 4.3.2.4)."""
    padder = padding.PKCS7(128).padder()
    padded = padder.update(data) + padder.finalize()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return enc.update(padded) + enc.finalize()


def decrypt(data: bytes, key: bytes, iv: bytes) -> bytes:
    """The inverse of ``encrypt`` (tests and tools)."""
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = dec.update(data) + dec.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def segment_key(seed: str, sequence: int, rotation: int) -> bytes:
    return key_for(seed, sequence // rotation)


def referenced(text: str, playlist_key: str) -> dict[str, str]:
    """broadcast -> stream of every segment a media playlist lists."""
    base = posixpath.dirname(playlist_key)
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            p = keys.parse(posixpath.normpath(posixpath.join(base, line)))
            if p is not None and p.kind == "segment":
                out[p.broadcast] = p.stream
    return out


def add_key_tags(text: str, playlist_key: str, seeds: Mapping[str, str], rotation: int) -> str:
    """The media playlist ``text`` (stored at ``playlist_key``) as served: EXT-X-KEY
    before each segment of an encrypted broadcast (``seeds``: broadcast -> seed,
    "" for a clear one) whose key or IV differs from the one in force, METHOD=NONE
    before a clear segment or an EXT-X-MAP after a key. An IV is written only where
    a segment's number is not its media sequence number (a clip's playlist). A
    playlist with no encrypted segment comes back as it is; one with any loses its
    LL-HLS part lines."""
    base = posixpath.dirname(playlist_key)
    lines = text.splitlines()
    plan: list[tuple[str, int] | None] = []  # per segment URI: (key URI, explicit IV or -1)
    msn = 0
    any_encrypted = False
    for line in lines:
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            msn = int(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-SKIP:"):
            m = _SKIP.search(line)
            msn += int(m.group(1)) if m else 0
        elif line and not line.startswith("#"):
            p = keys.parse(posixpath.normpath(posixpath.join(base, line)))
            seed = seeds.get(p.broadcast, "") if p is not None and p.kind == "segment" else ""
            if p is not None and seed:
                index = p.sequence // rotation
                uri = keys.relative(keys.aes_key(p.stream, p.broadcast, index), base)
                plan.append((uri, -1 if p.sequence == msn else p.sequence))
                any_encrypted = True
            else:
                plan.append(None)
            msn += 1
    if not any_encrypted:
        return text
    out: list[str] = []
    pending: list[str] = []
    state: tuple[str, int] | None = None
    segments = iter(plan)

    def key_line(want: tuple[str, int] | None) -> str:
        if want is None:
            return "#EXT-X-KEY:METHOD=NONE"
        uri, iv = want
        iv_attr = f",IV=0x{iv:032x}" if iv >= 0 else ""
        return f'#EXT-X-KEY:METHOD=AES-128,URI="{uri}"{iv_attr}'

    def flush(want: tuple[str, int] | None, is_segment: bool) -> None:
        nonlocal state
        placed = not is_segment
        for line in pending:
            if line.startswith(_PART_LINES):
                continue
            if line.startswith("#EXT-X-SERVER-CONTROL:"):
                line = "#EXT-X-SERVER-CONTROL:" + ",".join(
                    a
                    for a in line.split(":", 1)[1].split(",")
                    if not a.startswith("PART-HOLD-BACK=")
                )
            if line.startswith("#EXT-X-MAP:") and state is not None:
                out.append(key_line(None))  # the init segment stays in the clear
                state = None
            if line.startswith("#EXTINF:") and not placed:
                if want != state:
                    out.append(key_line(want))
                    state = want
                placed = True
            out.append(line)
        if not placed and want != state:
            out.append(key_line(want))
            state = want
        pending.clear()

    for line in lines:
        if line and not line.startswith("#"):
            flush(next(segments), True)
            out.append(line)
        else:
            pending.append(line)
    flush(None, False)
    return "\n".join(out) + "\n"
