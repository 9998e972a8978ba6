"""Watching a live stream from outside, the way a player would, for the fault tests."""

from __future__ import annotations

import threading
import time

import httpx
import m3u8


def whole_playlist(text: str, uri: str | None = None) -> m3u8.M3U8:
    """A media playlist as a player that ignores LL-HLS parts sees it: its complete
    segments. (The m3u8 library puts the parts of the segment in progress, and the
    program date of that segment, in a last segment without a URI.)"""
    pl = m3u8.loads(text, uri=uri)
    while pl.segments and not pl.segments[-1].uri:
        pl.segments.pop()
    return pl


def seq_of(uri: str) -> int:
    return int(uri.rsplit("/", 1)[1].split(".")[0])


class PlaylistWatcher(threading.Thread):
    """Polls every rendition playlist (round robin over the origins) until stopped: a
    playlist must never go backwards (its first or next media sequence number, or an
    ENDLIST taken back), and every object it lists must be there (HEAD). Fetches that
    fail (an origin stopped on purpose, a store that is away) are counted, not errors."""

    def __init__(self, origins: list[str], stream: str, renditions: tuple[str, ...],
                 interval: float = 0.3, max_polls: int = 5000) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.origins = origins
        self.stream = stream
        self.renditions = renditions
        self.interval = interval
        self.max_polls = max_polls
        self.stop = threading.Event()
        self.problems: list[str] = []
        self.polls = 0
        self.failed_fetches = 0
        self.last: dict[str, tuple[int, int]] = {}  # rendition -> (first msn, next msn)
        self.ended: set[str] = set()
        self.gaps_seen: dict[str, set[int]] = {}  # rendition -> msns ever listed as gaps
        self.checked: set[str] = set()

    def run(self) -> None:
        client = httpx.Client(timeout=5)
        i = 0
        while not self.stop.is_set() and self.polls < self.max_polls:
            i += 1
            base = f"{self.origins[i % len(self.origins)]}/hls/{self.stream}"
            for r in self.renditions:
                try:
                    resp = client.get(f"{base}/{r}.m3u8")
                except httpx.TransportError:
                    self.failed_fetches += 1
                    continue
                if resp.status_code != 200:
                    self.failed_fetches += resp.status_code != 404
                    continue
                self._check(client, base, r, whole_playlist(resp.text))
            self.polls += 1
            time.sleep(self.interval)
        client.close()

    def _check(self, client: httpx.Client, base: str, r: str, pl: m3u8.M3U8) -> None:
        first, nxt = pl.media_sequence or 0, (pl.media_sequence or 0) + len(pl.segments)
        old = self.last.get(r)
        if old is not None and (first < old[0] or nxt < old[1]):
            self.problems.append(f"{r} went backwards: {old} -> {(first, nxt)}")
        if r in self.ended and not pl.is_endlist and old is not None and nxt <= old[1]:
            self.problems.append(f"{r} lost its ENDLIST at {nxt}")
        if pl.is_endlist:
            self.ended.add(r)
        self.last[r] = (max(first, old[0]) if old else first, max(nxt, old[1]) if old else nxt)
        for n, seg in enumerate(pl.segments):
            if "#EXT-X-GAP" in seg.dumps(None):
                self.gaps_seen.setdefault(r, set()).add(first + n)
                continue  # a gap's object need not exist
            for uri in (seg.uri, seg.init_section.uri if seg.init_section else None):
                if uri and uri not in self.checked:
                    try:
                        status = client.head(f"{base}/{uri}").status_code
                    except httpx.TransportError:
                        status = 0
                    if status == 404:
                        self.problems.append(f"{r} listed a missing object {uri}")
                    elif status != 200:  # the origin or its store is away: ask again later
                        self.failed_fetches += 1
                        continue
                    self.checked.add(uri)

    def finish(self) -> None:
        self.stop.set()
        self.join(15)
