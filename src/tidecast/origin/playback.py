"""The origin's playback guard: which HLS requests a viewer may have, and the objects
an encrypted broadcast needs served differently (keys, segments, playlists).

Both the sendfile fast path and the app ask ``check`` (synchronous, from what
is cached) and fall back to ``decide`` (which reads the database first) when it
says it needs something; both build the special responses with ``serve``. So the
two paths cannot drift apart, as with ``files.respond``.

What is cached: each stream's policy for ``POLICY_TTL`` seconds (a change made on
another origin takes effect here within that), each broadcast's key seed for as
long as the process lives (it never changes).

The rules (``access.tokens`` for the token itself):

- a token in the path that is not valid for the stream is refused (403), on any
  stream: that URL can never work. A cookie that is not valid is ignored.
- a stream whose access is not ``public`` needs a valid token for every object
  (403); its objects go out ``Cache-Control: private`` (an edge of ours caches
  them per token holder scope all the same, see ``edge.nginx``).
- keys of an encrypted broadcast: with the stream's access, ``private, no-store``.
- segments of an encrypted broadcast go out encrypted, their playlists with
  EXT-X-KEY tags, their parts not at all (``access.hlskey``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tidecast import keys
from tidecast.access import hlskey, tokens
from tidecast.db import transient
from tidecast.db.playback import BroadcastKeys, Playback, Policy
from tidecast.db.recordings import BroadcastNotFound
from tidecast.db.repo import NAME_RE, Database, StreamNotFound
from tidecast.live import LiveStatus
from tidecast.origin import files
from tidecast.origin.reload import ReloadService, served_reply

log = logging.getLogger("tidecast.origin.playback")

POLICY_TTL = 2.0  # seconds a stream's policy is used before it is read again
KEY_HEADERS = {"content-type": "application/octet-stream", "cache-control": "private, no-store"}
_MAX_BROADCASTS = 20_000
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one request below /hls/: ``status`` 0 = serve ``path`` (the
    path without its token); else refuse with it and ``detail``. ``special``: ""
    (the stored file as it is), "key", "encrypt" (a segment), "playlist" (may need
    EXT-X-KEY tags)."""

    status: int
    detail: str = ""
    path: str = ""
    private: bool = False
    special: str = ""
    stream: str = ""


@dataclass(frozen=True, slots=True)
class Need:
    """``check`` could not decide from its caches: read these first (``decide``)."""

    stream: str = ""
    broadcast: str = ""


Loader = Callable[[str], Awaitable[tuple[bytes, str, float]]]  # key -> (body, etag, mtime)


class PlaybackGuard:
    def __init__(
        self, db: Database, secret: str, live: LiveStatus, *, rotation: int = 10,
        clock: Callable[[], float] = time.time, policy_ttl: float = POLICY_TTL,
    ) -> None:  # fmt: skip
        self.playback = Playback(db)
        self.secret = tokens.check_secret(secret)
        self.live = live
        self.rotation = rotation
        self.clock = clock
        self.policy_ttl = policy_ttl
        self._policies: dict[str, tuple[float, Policy | None]] = {}
        self._keys: OrderedDict[str, BroadcastKeys | None] = OrderedDict()
        self._encrypted: OrderedDict[tuple[str, str], bytes] = OrderedDict()  # (key, etag) -> body

    # -- caches ---------------------------------------------------------------------
    def policy_now(self, stream: str) -> Policy | None | object:
        got = self._policies.get(stream)
        if got is None or time.monotonic() - got[0] > self.policy_ttl:
            return _MISSING
        return got[1]

    async def policy(self, stream: str) -> Policy | None:
        """The stream's policy (None: no such stream), read if not fresh."""
        got = self.policy_now(stream)
        if got is not _MISSING:
            return got  # type: ignore[return-value]
        try:
            p: Policy | None = await transient.call("playback policy", self.playback.policy, stream,
                                                    deadline=5.0)  # fmt: skip
        except StreamNotFound:
            p = None
        if len(self._policies) > _MAX_BROADCASTS:
            self._policies.clear()
        self._policies[stream] = (time.monotonic(), p)
        return p

    def forget(self, stream: str) -> None:
        """This node changed the stream's policy: read it again at once."""
        self._policies.pop(stream, None)

    def keys_now(self, broadcast: str) -> BroadcastKeys | None | object:
        return self._keys.get(broadcast, _MISSING)

    async def broadcast_keys(self, broadcast: str) -> BroadcastKeys | None:
        got = self._keys.get(broadcast, _MISSING)
        if got is not _MISSING:
            return got  # type: ignore[return-value]
        try:
            k: BroadcastKeys | None = await transient.call(
                "broadcast keys", self.playback.broadcast_keys, broadcast, deadline=5.0
            )
        except BroadcastNotFound:
            return None  # not kept: it may be created in a moment
        self._keys[broadcast] = k
        while len(self._keys) > _MAX_BROADCASTS:
            self._keys.popitem(last=False)
        return k

    # -- tokens -----------------------------------------------------------------
    def token_valid(self, stream: str, candidates: list[str]) -> bool:
        now = self.clock()
        return any(tokens.verify(self.secret, t, stream, now).ok for t in candidates)

    def issue(self, stream: str, ttl: float) -> tuple[str, int]:
        expires = int(self.clock() + ttl)
        return tokens.issue(self.secret, stream, expires), expires

    # -- decisions --------------------------------------------------------------
    def check(self, path: str, cookie: str) -> Decision | Need:
        """``path``: below /hls/, percent-decoded. ``cookie``: the Cookie header."""
        token, clean = tokens.split_path(path)
        stream = clean.split("/", 1)[0]
        if token is not None and "/" not in clean:
            return Decision(404, "not found")
        if not NAME_RE.match(stream):  # no stream's: the path rules answer (400/404)
            return Decision(0, "", clean)
        policy = self.policy_now(stream)
        if policy is _MISSING:
            return Need(stream=stream)
        assert policy is None or isinstance(policy, Policy)
        if token is not None:
            checked = tokens.verify(self.secret, token, stream, self.clock())
            if not checked.ok:
                why = "expired" if checked.reason == "expired" else "invalid"
                return Decision(403, f"playback token {why}")
            allowed = True
        else:
            allowed = self.token_valid(stream, tokens.cookie_tokens(cookie, stream))
        private = policy is not None and policy.access != "public"
        if private and not allowed:
            return Decision(403, "this stream needs a playback token")
        p = keys.parse(f"{keys.ROOT}/{clean}")
        special = ""
        if p is not None and p.kind in ("aes_key", "segment", "part"):
            k = self.keys_now(p.broadcast)
            if k is _MISSING:
                return Need(broadcast=p.broadcast)
            assert k is None or isinstance(k, BroadcastKeys)
            seed = k.seed if k is not None and k.stream == stream else ""
            if p.kind == "aes_key":
                if not seed:
                    return Decision(404, "not found")
                special = "key"
            elif seed and p.kind == "part":
                return Decision(404, "parts of an encrypted broadcast are not served")
            elif seed:
                special = "encrypt"
        elif (
            p is not None
            and clean.endswith(".m3u8")
            and p.kind in ("live_playlist", "vod_playlist", "clip")
        ):
            bid = p.broadcast
            if p.kind == "live_playlist":
                b = self.live.live().get(stream)
                bid = b.broadcast if b is not None else ""
            k = self.keys_now(bid) if bid else None
            if k is _MISSING:
                return Need(broadcast=bid)
            seed = k.seed if isinstance(k, BroadcastKeys) else ""
            if seed or (policy is not None and policy.encryption != "none"):
                special = "playlist"
        return Decision(0, "", clean, private, special, stream)

    async def decide(self, path: str, cookie: str) -> Decision:
        for _ in range(4):
            d = self.check(path, cookie)
            if isinstance(d, Decision):
                return d
            if d.stream:
                await self.policy(d.stream)
            if d.broadcast and await self.broadcast_keys(d.broadcast) is None:
                self._keys[d.broadcast] = None  # unknown now; looked up again after a while
                asyncio.get_running_loop().call_later(
                    self.policy_ttl, self._keys.pop, d.broadcast, None
                )
        raise RuntimeError(f"playback decision for {path!r} did not settle")

    # -- special responses --------------------------------------------------------
    async def serve(
        self, d: Decision, load: Loader, headers: Mapping[str, str], head: bool,
        playlist_text: bytes | None = None,
    ) -> files.ServedObject:  # fmt: skip
        """The response for a decision with ``special`` set; ``playlist_text``: a
        playlist body already had (an LL-HLS blocking answer)."""
        key = f"{keys.ROOT}/{d.path}"
        p = keys.parse(key)
        assert p is not None
        if d.special == "key":
            k = await self.broadcast_keys(p.broadcast)
            assert k is not None and k.seed
            body = hlskey.key_for(k.seed, p.sequence)
            return files.ServedObject(
                200, {**KEY_HEADERS, "content-length": "16"}, b"" if head else body
            )
        if d.special == "encrypt":
            k = await self.broadcast_keys(p.broadcast)
            assert k is not None and k.seed
            clear, etag, mtime = await load(key)
            cached = self._encrypted.get((key, etag))
            if cached is None:
                skey = hlskey.segment_key(k.seed, p.sequence, self.rotation)
                cached = await asyncio.to_thread(
                    hlskey.encrypt, clear, skey, hlskey.iv_for(p.sequence)
                )
                self._encrypted[(key, etag)] = cached
                while len(self._encrypted) > 64:
                    self._encrypted.popitem(last=False)
            body = cached
            served = files.serve_bytes(
                d.path, body, etag.rstrip('"') + '-aes"', mtime, headers, head
            )
            return self.finish(d, served)
        if d.special == "playlist":
            if playlist_text is None:
                raw, _, mtime = await load(key)
            else:
                raw, mtime = playlist_text, self.clock()
            text = await self.key_tags(raw.decode(), key)
            body = text.encode()
            served = files.serve_bytes(d.path, body, _etag(body), mtime, headers, head)
            return self.finish(d, served)
        raise ValueError(f"nothing special to serve for {d}")

    async def key_tags(self, text: str, key: str) -> str:
        seeds: dict[str, str] = {}
        for b, stream in hlskey.referenced(text, key).items():
            k = await self.broadcast_keys(b)
            seeds[b] = k.seed if k is not None and k.stream == stream else ""
        return hlskey.add_key_tags(text, key, seeds, self.rotation)

    @staticmethod
    def finish(d: Decision, served: files.ServedObject) -> files.ServedObject:
        """A non-public stream's objects are not for shared caches (but ours, see edge.nginx)."""
        if d.private and "cache-control" in served.headers:
            cc = served.headers["cache-control"].replace("public", "private")
            return dataclasses.replace(served, headers={**served.headers, "cache-control": cc})
        return served


def local_loader(media_root: Path) -> Loader:
    """Objects of a local store, through the hot-file cache (checked against the file)."""
    root = media_root.resolve()

    async def load(key: str) -> tuple[bytes, str, float]:
        target = root.joinpath(*key.split("/"))
        hot = await files.HOT_FILES.get(root, target)
        return hot.body, hot.etag, hot.mtime

    return load


async def serve_special(
    guard: PlaybackGuard, d: Decision, load: Loader, headers: Mapping[str, str], head: bool,
    query: str, reload: ReloadService | None,
) -> files.ServedObject:  # fmt: skip
    """``guard.serve``, with an LL-HLS blocking playlist request answered by ``reload``
    first (its answer then gets its EXT-X-KEY tags)."""
    if d.special == "playlist" and reload is not None and "_HLS_" in query:
        reply = await reload.playlist(f"{keys.ROOT}/{d.path}", query)
        if reply is not None and reply.status == 200:
            text = await guard.key_tags(reply.body.decode(), f"{keys.ROOT}/{d.path}")
            return guard.finish(
                d, served_reply(dataclasses.replace(reply, body=text.encode()), headers, head)
            )
        if reply is not None:
            return served_reply(reply, headers, head)
    return await guard.serve(d, load, headers, head)


def refusal(d: Decision) -> tuple[int, bytes]:
    """(status, JSON body) of a refused request."""
    return d.status, json.dumps({"detail": d.detail}).encode()


def _etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
