"""Store keys: the one module that builds and parses the names of stored objects.

Every object of a stream lives under ``hls/<stream>/``::

    hls/<stream>/master.m3u8                          live multivariant playlist
    hls/<stream>/<rendition>.m3u8                     live media playlist
    hls/<stream>/<broadcast>/master.m3u8              VOD multivariant playlist
    hls/<stream>/<broadcast>/<rendition>.m3u8         VOD media playlist
    hls/<stream>/<broadcast>/poster.jpg               VOD poster
    hls/<stream>/<broadcast>/<rendition>/init-p<part>g<generation>.mp4   segmenter init
    hls/<stream>/<broadcast>/<rendition>/init-<hash>.mp4                 transcoder init
    hls/<stream>/<broadcast>/<rendition>/<sequence:06d>.m4s              media segment
    hls/<stream>/<broadcast>/<rendition>/<sequence:06d>.<index>.m4s      LL-HLS part of it
    hls/<stream>/<broadcast>/jobs/<sequence:06d>-<rungs hash>.json       transcode job outputs
    hls/<stream>/<broadcast>/jobs/<sequence:06d>-r-<rendition>.json      a rendition's encode
    hls/<stream>/<broadcast>/clips/<clip>/...                            a clip's playlists
    hls/<stream>/<broadcast>/keys/<index:06d>.key                        AES-128 key (served, never stored)
    hls/<stream>/<broadcast>/downloads/<rendition>-<hash>.mp4            an MP4 download, made once

The origin serves ``hls/...`` at ``/hls/...``; playlists name their objects
relative to themselves (``relative``).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass

ROOT = "hls"
MASTER = "master"

_SEGMENT = re.compile(r"^(\d{6,})\.m4s$")
_PART = re.compile(r"^(\d{6,})\.(\d+)\.m4s$")
_AES_KEY = re.compile(r"^(\d{6,})\.key$")


def stream_prefix(stream: str) -> str:
    return f"{ROOT}/{stream}"


def live_playlist(stream: str, rendition: str) -> str:
    return f"{ROOT}/{stream}/{rendition}.m3u8"


def live_master(stream: str) -> str:
    return f"{ROOT}/{stream}/{MASTER}.m3u8"


def broadcast_prefix(stream: str, broadcast: str) -> str:
    return f"{ROOT}/{stream}/{broadcast}"


def vod_playlist(stream: str, broadcast: str, rendition: str) -> str:
    return f"{broadcast_prefix(stream, broadcast)}/{rendition}.m3u8"


def vod_master(stream: str, broadcast: str) -> str:
    return f"{broadcast_prefix(stream, broadcast)}/{MASTER}.m3u8"


def poster(stream: str, broadcast: str) -> str:
    return f"{broadcast_prefix(stream, broadcast)}/poster.jpg"


def clip_prefix(stream: str, broadcast: str, clip: str) -> str:
    return f"{broadcast_prefix(stream, broadcast)}/clips/{clip}"


def rendition_prefix(stream: str, broadcast: str, rendition: str) -> str:
    return f"{broadcast_prefix(stream, broadcast)}/{rendition}"


def source_init(stream: str, broadcast: str, rendition: str, generation: int, part: int = 0) -> str:
    """The segmenter's init segment of one decoder configuration of one publisher session."""
    return f"{rendition_prefix(stream, broadcast, rendition)}/init-p{part}g{generation}.mp4"


def hashed_init(stream: str, broadcast: str, rendition: str, data: bytes) -> str:
    """A transcoder's init segment, named by its bytes: the same encoding parameters give
    the same key, so a rendition keeps one EXT-X-MAP until the parameters change."""
    digest = hashlib.sha256(data).hexdigest()[:12]
    return f"{rendition_prefix(stream, broadcast, rendition)}/init-{digest}.mp4"


def segment(stream: str, broadcast: str, rendition: str, sequence: int) -> str:
    return f"{rendition_prefix(stream, broadcast, rendition)}/{sequence:06d}.m4s"


def part(stream: str, broadcast: str, rendition: str, sequence: int, index: int) -> str:
    """One LL-HLS part (``index`` from 0) of a segment: a CMAF chunk, same init segment."""
    return f"{rendition_prefix(stream, broadcast, rendition)}/{sequence:06d}.{index}.m4s"


def job_rendition(stream: str, broadcast: str, sequence: int, rendition: str) -> str:
    """What one rendition of a streaming transcode job uses (its init segment), written
    before its first part: an encode resumed by another worker finds it."""
    return f"{broadcast_prefix(stream, broadcast)}/jobs/{sequence:06d}-r-{rendition}.json"


def job_outputs(stream: str, broadcast: str, sequence: int, rungs: tuple[str, ...]) -> str:
    """What one transcode job stored (written last): a redelivered job reuses it."""
    tag = hashlib.sha256(",".join(rungs).encode()).hexdigest()[:8]
    return f"{broadcast_prefix(stream, broadcast)}/jobs/{sequence:06d}-{tag}.json"


def aes_key(stream: str, broadcast: str, index: int) -> str:
    """The URI of a broadcast's AES-128 key number ``index`` (``access.hlskey``): made
    from the broadcast's seed when asked for, never stored."""
    return f"{broadcast_prefix(stream, broadcast)}/keys/{index:06d}.key"


def download(stream: str, broadcast: str, rendition: str, fingerprint: str) -> str:
    """A made MP4 download: ``fingerprint`` names exactly which segments it holds, so a
    recording that changed (healed) gets a new file instead of a stale one."""
    return f"{broadcast_prefix(stream, broadcast)}/downloads/{rendition}-{fingerprint}.mp4"


def relative(key: str, base_dir: str) -> str:
    """``key`` as a URI relative to the directory ``base_dir`` (a playlist's own)."""
    return posixpath.relpath(key, base_dir)


def url_path(key: str) -> str:
    """The origin's path for a stored object."""
    return "/" + key


@dataclass(frozen=True, slots=True)
class Parsed:
    """What a key names. ``kind`` is one of: live_playlist, live_master, vod_playlist,
    vod_master, poster, init, segment, part, aes_key, job, clip, download, other. ``index``
    is a part's."""

    kind: str
    stream: str
    broadcast: str = ""
    rendition: str = ""
    sequence: int = -1
    index: int = -1


def parse(key: str) -> Parsed | None:
    """The meaning of a key under ``hls/``; None for a key outside it."""
    parts = key.split("/")
    if len(parts) < 3 or parts[0] != ROOT or not parts[1]:
        return None
    stream = parts[1]
    if len(parts) == 3:
        name = parts[2]
        if name == f"{MASTER}.m3u8":
            return Parsed("live_master", stream)
        if name.endswith(".m3u8"):
            return Parsed("live_playlist", stream, rendition=name.removesuffix(".m3u8"))
        return Parsed("other", stream)
    broadcast = parts[2]
    if len(parts) == 4:
        name = parts[3]
        if name == f"{MASTER}.m3u8":
            return Parsed("vod_master", stream, broadcast)
        if name.endswith(".m3u8"):
            return Parsed("vod_playlist", stream, broadcast, name.removesuffix(".m3u8"))
        if name == "poster.jpg":
            return Parsed("poster", stream, broadcast)
        return Parsed("other", stream, broadcast)
    if parts[3] == "clips":
        return Parsed("clip", stream, broadcast)
    if parts[3] == "downloads" and len(parts) == 5:
        return Parsed("download", stream, broadcast)
    if len(parts) == 5:
        rendition, name = parts[3], parts[4]
        if rendition == "keys":
            m = _AES_KEY.match(name)
            if m:
                return Parsed("aes_key", stream, broadcast, sequence=int(m.group(1)))
            return Parsed("other", stream, broadcast)
        if rendition == "jobs" and name.endswith(".json"):
            return Parsed("job", stream, broadcast, sequence=int(name.split("-", 1)[0]))
        m = _SEGMENT.match(name)
        if m:
            return Parsed("segment", stream, broadcast, rendition, int(m.group(1)))
        m = _PART.match(name)
        if m:
            return Parsed("part", stream, broadcast, rendition, int(m.group(1)), int(m.group(2)))
        if name.startswith("init-") and name.endswith(".mp4"):
            return Parsed("init", stream, broadcast, rendition)
    return Parsed("other", stream, broadcast)


def is_live_playlist(key: str) -> bool:
    p = parse(key)
    return p is not None and p.kind in ("live_playlist", "live_master")
