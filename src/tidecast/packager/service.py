"""Packager service: consumes ``SegmentReady`` / broadcast events, writes HLS playlists.

Per stream it keeps one live media playlist per rendition and the multivariant
playlist. Segments are published strictly in sequence order per rendition
(out-of-order arrivals wait for their predecessors); a playlist is written only
after the objects it names are stored (the bus message comes after the store
write), and every playlist write is atomic (the store's contract).

Media sequence numbers are shared by all renditions: ``base + sequence`` where
``base`` is fixed when a broadcast starts, so segment N of every rendition has
the same number. A publisher that comes back within the reconnect grace continues
the same playlists after an EXT-X-DISCONTINUITY; otherwise EXT-X-ENDLIST is
written when the grace runs out (at once on server shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from tidecast.bus.base import Bus, Subscription
from tidecast.messages import (
    BroadcastEnded,
    BroadcastFinished,
    BroadcastStarted,
    Message,
    SegmentReady,
)
from tidecast.packager.hls import (
    AudioRendition,
    MediaPlaylist,
    PlaylistSegment,
    Variant,
    parse_media_playlist,
    render_multivariant,
)
from tidecast.packager.leader import StreamLeadership
from tidecast.store.base import ObjectNotFound, Store

log = logging.getLogger("tidecast.packager")


def media_playlist_key(stream: str, rendition: str) -> str:
    return f"hls/{stream}/{rendition}.m3u8"


def multivariant_key(stream: str) -> str:
    return f"hls/{stream}/master.m3u8"


@dataclass(slots=True)
class RenditionState:
    name: str
    playlist: MediaPlaylist
    next_seq: dict[str, int] = field(default_factory=dict)  # broadcast -> next sequence
    pending: dict[tuple[str, int], SegmentReady] = field(default_factory=dict)
    peak_bps: int = 0
    total_bits: float = 0.0
    total_seconds: float = 0.0
    codecs: str = ""
    width: int = 0
    height: int = 0
    frame_rate: float = 0.0
    last_init: str = ""
    discontinuity_next: bool = False

    def variant(self) -> Variant:
        avg = int(self.total_bits / self.total_seconds) if self.total_seconds else self.peak_bps
        return Variant(
            uri=f"{self.name}.m3u8", bandwidth=max(self.peak_bps, avg), average_bandwidth=avg,
            codecs=self.codecs, width=self.width, height=self.height, frame_rate=self.frame_rate,
        )  # fmt: skip


@dataclass(slots=True)
class BroadcastTimeline:
    msn_base: int
    anchors: dict[int, float] = field(default_factory=dict)  # part -> wall clock of media time 0
    segments: int | None = None  # known once the publisher session ended


@dataclass(slots=True)
class StreamState:
    name: str
    renditions: dict[str, RenditionState] = field(default_factory=dict)
    broadcasts: dict[str, BroadcastTimeline] = field(default_factory=dict)
    current: str | None = None
    next_msn: int = 0
    ended: bool = False
    master_text: str = ""
    expected: set[str] = field(default_factory=set)  # renditions the current broadcast makes
    end_pending: bool = False  # the grace is over; end once every rendition has caught up
    finishing: str | None = None  # the broadcast being finished


PublishedHook = Callable[[SegmentReady, float], None]


class SegmentRecorder(Protocol):
    """What the packager needs from the recorder."""

    async def record(self, seg: SegmentReady, program_date_time: float) -> None: ...

    async def finished(self, stream: str, broadcast: str) -> object: ...


class TakeoverSource(Protocol):
    """What a packager taking a stream over reads from the database."""

    def current_broadcast(self, stream: str) -> tuple[str, float] | None: ...

    def recorded_keys(self, broadcast: str) -> set[tuple[str, int]]: ...

    def needs_vod(self, broadcast: str) -> bool: ...


class Packager:
    def __init__(
        self, store: Store, bus: Bus, *, window: int, target_duration: float,
        include_source: bool = True, recorder: SegmentRecorder | None = None,
        leadership: StreamLeadership | None = None, takeover: TakeoverSource | None = None,
    ) -> None:  # fmt: skip
        self.leadership = leadership
        self.takeover = takeover
        self._replaying: str | None = None  # the stream being rebuilt: no writes
        self._recorded: dict[str, set[tuple[str, int]]] = {}  # broadcast -> already in the db
        self._floor: dict[str, int] = {}  # playlist key -> next msn the stored copy has
        self._seen: dict[str, float] = {}  # streams led elsewhere -> last message (monotonic)
        self.include_source = include_source
        self.recorder = recorder
        self.store = store
        self.bus = bus
        self.window = window
        self.target_duration = target_duration
        self.streams: dict[str, StreamState] = {}
        self.hooks: list[PublishedHook] = []
        self._subs: list[Subscription] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self._inflight = 0

    async def start(self) -> None:
        if self.leadership is None:  # the only packager: what is stored is stale
            await self._drop_stale_playlists()
        else:
            self.leadership.on_lost.append(self._forget)
            self.leadership.start()
            self._tasks.append(asyncio.create_task(self._watch_leaders(), name="packager-watch"))
        for pattern in ("broadcast.>", "segment.>"):
            sub = self.bus.subscribe(pattern)
            self._subs.append(sub)
            self._tasks.append(asyncio.create_task(self._consume(sub), name=f"packager {pattern}"))

    def _busy(self) -> bool:
        return bool(self._inflight or any(sub.pending() for sub in self._subs))

    async def aclose(self, drain_timeout: float = 5.0) -> None:
        """Handle every message already delivered, then stop consuming."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        while loop.time() < deadline and self._busy():  # noqa: ASYNC110 (bounded shutdown drain)
            await asyncio.sleep(0.01)
        for sub in self._subs:
            await sub.aclose()
        for task in self._tasks:
            if task.get_name() == "packager-watch":
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for st in self.streams.values():
            if st.end_pending and self._may_write(st.name):
                await self._end_stream(st, force=True)
        if self.leadership is not None:
            await self.leadership.aclose()

    async def _drop_stale_playlists(self) -> None:
        """Live playlists left by an earlier run describe nothing live: remove them."""
        for key in await self.store.list("hls"):
            parts = key.split("/")
            if len(parts) == 3 and key.endswith(".m3u8"):
                await self.store.delete(key)

    async def _consume(self, sub: Subscription) -> None:
        async for delivery in sub:
            msg = delivery.message
            self._inflight += 1
            try:
                async with self._lock:
                    if await self._leads(msg):
                        await self._handle(msg)
            except Exception:
                log.exception("packager failed on %s", delivery.subject)
            finally:
                self._inflight -= 1
            await delivery.ack()

    async def _handle(self, msg: Message) -> None:
        if isinstance(msg, SegmentReady):
            await self._on_segment(msg)
        elif isinstance(msg, BroadcastStarted):
            self._on_started(msg)
        elif isinstance(msg, BroadcastEnded):
            self._on_ended(msg)
        elif isinstance(msg, BroadcastFinished):
            await self._on_finished(msg)

    # ------------------------------------------------------------ leadership
    async def _leads(self, msg: Message) -> bool:
        """Whether this packager handles ``msg``: always when it is the only one;
        otherwise only for streams it holds the lease of (taking a free one over)."""
        stream = getattr(msg, "stream", None)
        if self.leadership is None or not isinstance(stream, str):
            return True
        if self.leadership.leads(stream):
            return True
        if stream in self.streams:  # the lease ran out under us: rebuild before writing
            self._forget(stream)
        self._seen[stream] = time.monotonic()
        if not await self.leadership.try_lead(stream):
            return False
        await self._take_over(stream)
        return True

    async def _watch_leaders(self) -> None:
        """Take over streams whose leader went quiet even when no message comes (the
        last message of a broadcast may be the one its dead leader never handled)."""
        assert self.leadership is not None
        while True:
            await asyncio.sleep(self.leadership.ttl / 2)
            now = time.monotonic()
            for stream, seen in list(self._seen.items()):
                if now - seen > 600:
                    del self._seen[stream]
                    continue
                if self.leadership.leads(stream):
                    continue
                try:
                    async with self._lock:
                        if await self.leadership.try_lead(stream):
                            await self._take_over(stream)
                except Exception:
                    log.exception("%s: taking over failed; trying again", stream)

    def _forget(self, stream: str) -> None:
        if self.streams.pop(stream, None) is not None:
            log.info("%s: no longer led here; state dropped", stream)

    def _may_write(self, stream: str) -> bool:
        if self._replaying == stream:
            return False
        return self.leadership is None or self.leadership.leads(stream)

    async def _take_over(self, stream: str) -> None:
        """Rebuild a stream led elsewhere until now, from durable state only.

        The current broadcast comes from the database and its messages from the
        bus's log; replaying them gives the same playlists the last leader built
        (the same inputs in the same order). Sequence numbers continue from the
        stored playlists, segments already recorded are not recorded again, and
        a playlist is never written behind its stored copy.
        """
        self.streams.pop(stream, None)
        self._seen.pop(stream, None)
        if self.takeover is None:
            return
        current = await asyncio.to_thread(self.takeover.current_broadcast, stream)
        if current is None:
            return
        broadcast, started_at = current
        st = self._stream(stream)
        st.next_msn = await self._stored_msn_base(st, broadcast)
        self._recorded[broadcast] = await asyncio.to_thread(self.takeover.recorded_keys, broadcast)
        t0 = time.monotonic()
        messages = await self.bus.replay((f"broadcast.{stream}", f"segment.{stream}"), started_at - 5.0)
        self._replaying = stream
        try:
            for m in messages:
                if getattr(m, "broadcast", None) == broadcast:  # not an earlier broadcast's
                    await self._handle(m)
        finally:
            self._replaying = None
            self._recorded.pop(broadcast, None)
        for r in st.renditions.values():
            await self._put_playlist(st, r)
        await self._write_master(st, force=True)
        if st.ended and st.finishing:  # the last leader may have died before writing the VOD
            if await asyncio.to_thread(self.takeover.needs_vod, st.finishing):
                await self._finish_recording(st)
            st.finishing = None
        log.info("%s: took over broadcast %s: %d messages replayed in %.2f s", stream, broadcast,
                 len(messages), time.monotonic() - t0)  # fmt: skip

    async def _stored_msn_base(self, st: StreamState, broadcast: str) -> int:
        """Where the current broadcast's sequence numbers start, read back from the
        stored playlists. Their segments of earlier broadcasts seed the new state (the
        window keeps them, as the last leader's did), and each stored playlist sets a
        floor the new leader never writes below."""
        base: int | None = None
        next_msn = 0
        for key in await self.store.list(f"hls/{st.name}"):
            name = key.rsplit("/", 1)[-1].removesuffix(".m3u8")
            if key.count("/") != 2 or not key.endswith(".m3u8") or name == "master":
                continue
            try:
                stored = parse_media_playlist((await self.store.get(key)).decode(), self.window,
                                              self.target_duration)  # fmt: skip
            except (ObjectNotFound, ValueError, UnicodeDecodeError) as exc:
                log.warning("%s: cannot read back %s: %r", st.name, key, exc)
                continue
            r = st.renditions[name] = RenditionState(name, MediaPlaylist(self.window, self.target_duration))
            r.playlist.discontinuity_sequence = stored.discontinuity_sequence
            for seg in stored.segments:
                if seg.uri.startswith(f"{broadcast}/"):
                    if base is None:
                        base = seg.msn - int(posixpath.basename(seg.uri).split(".")[0])
                    continue
                r.playlist.append(seg)
                r.last_init = seg.init_uri
            self._floor[key] = stored.next_msn
            next_msn = max(next_msn, stored.next_msn)
        return base if base is not None else next_msn

    def _stream(self, name: str) -> StreamState:
        st = self.streams.get(name)
        if st is None:
            st = self.streams[name] = StreamState(name)
        return st

    def _on_started(self, msg: BroadcastStarted) -> None:
        st = self._stream(msg.stream)
        had_segments = any(r.playlist.segments for r in st.renditions.values())
        tl = st.broadcasts.get(msg.broadcast)
        if tl is not None:  # a resumed part of a known broadcast (or a repeated message)
            if msg.part and tl.segments is not None:
                tl.segments = None
                for r in st.renditions.values():
                    r.discontinuity_next = bool(r.playlist.segments)
                log.info("%s: broadcast %s resumed (part %d)", msg.stream, msg.broadcast, msg.part)
            return
        st.end_pending = False
        st.broadcasts[msg.broadcast] = BroadcastTimeline(msn_base=st.next_msn)
        st.current = msg.broadcast
        st.ended = False
        st.expected = set()
        for r in st.renditions.values():
            r.discontinuity_next = had_segments
        log.info("%s: broadcast %s started", msg.stream, msg.broadcast)

    def _on_ended(self, msg: BroadcastEnded) -> None:
        """The publisher left; the playlists wait (the gate decides when it is over)."""
        tl = self._stream(msg.stream).broadcasts.get(msg.broadcast)
        if tl is not None:
            tl.segments = msg.segments

    async def _on_finished(self, msg: BroadcastFinished) -> None:
        st = self._stream(msg.stream)
        if st.current == msg.broadcast and not st.ended:
            st.finishing = msg.broadcast
            await self._end_stream(st)

    def _caught_up(self, st: StreamState) -> bool:
        """Every rendition of the current broadcast has listed its last segment."""
        tl = st.broadcasts.get(st.current or "")
        if tl is None or tl.segments is None:
            return True
        for name in st.expected or st.renditions:
            r = st.renditions.get(name)
            if r is None or r.next_seq.get(st.current or "", 0) < tl.segments:
                return False
        return True

    async def _end_stream(self, st: StreamState, force: bool = False) -> None:
        if not force and not self._caught_up(st):
            st.end_pending = True  # renditions still being transcoded: end after them
            return
        st.end_pending = False
        st.ended = True
        for r in st.renditions.values():
            r.playlist.end()
            await self._put_playlist(st, r)
        log.info("%s: playlists ended", st.name)
        if self._replaying == st.name:
            return  # whether the last leader finished the recording is checked after the replay
        await self._finish_recording(st)

    async def _finish_recording(self, st: StreamState) -> None:
        if st.finishing and self.recorder is not None and self._may_write(st.name):
            try:
                await self.recorder.finished(st.name, st.finishing)
            except Exception:
                log.exception("%s: could not finish the recording of %s", st.name, st.finishing)
        st.finishing = None

    async def _on_segment(self, msg: SegmentReady) -> None:
        if msg.rendition == "source" and not self.include_source:
            return  # transcoded renditions are listed instead
        st = self._stream(msg.stream)
        if msg.broadcast == st.current or st.current is None:
            st.expected |= set(msg.renditions or (msg.rendition,))
        timeline = st.broadcasts.get(msg.broadcast)
        if timeline is None:  # segment before its BroadcastStarted: treat as started
            self._on_started(BroadcastStarted(msg.stream, msg.broadcast, msg.first_frame_arrival))
            timeline = st.broadcasts[msg.broadcast]
        r = st.renditions.get(msg.rendition)
        if r is None:
            r = st.renditions[msg.rendition] = RenditionState(
                msg.rendition, MediaPlaylist(self.window, self.target_duration)
            )
            # a rendition that first appears mid-stream starts at the right msn
        nxt = r.next_seq.setdefault(msg.broadcast, 0)
        if msg.sequence < nxt:
            return  # a repeated delivery of a segment already listed
        r.pending[(msg.broadcast, msg.sequence)] = msg
        published = False
        while (msg.broadcast, nxt) in r.pending:
            seg = r.pending.pop((msg.broadcast, nxt))
            pdt = (
                timeline.anchors.setdefault(seg.part, seg.first_frame_arrival - seg.start)
                + seg.start
            )
            if self.recorder is not None and (
                seg.rendition,
                seg.sequence,
            ) not in self._recorded.get(seg.broadcast, ()):
                await self.recorder.record(seg, pdt)  # recorded before it is listed
            self._append(st, r, timeline, seg, pdt)
            nxt += 1
            published = True
        r.next_seq[msg.broadcast] = nxt
        if not published:
            return
        await self._put_playlist(st, r)
        await self._write_master(st)
        if st.end_pending and self._caught_up(st):
            await self._end_stream(st)
        if self._replaying:
            return
        now = time.time()
        for hook in self.hooks:
            hook(msg, now)

    def _append(
        self, st: StreamState, r: RenditionState, tl: BroadcastTimeline, seg: SegmentReady,
        pdt: float,
    ) -> None:  # fmt: skip
        msn = tl.msn_base + seg.sequence
        base = f"hls/{st.name}/"
        init_uri = posixpath.relpath(seg.init_key, base) if seg.init_key else r.last_init
        if msn < r.playlist.next_msn:  # duplicate delivery of a segment already listed
            return
        if not init_uri:  # a gap before this rendition ever had an init segment
            log.warning("%s/%s: gap at the start, segment %d not listed", st.name, r.name, msn)
            return
        discontinuity = r.discontinuity_next or (bool(r.last_init) and init_uri != r.last_init)
        r.playlist.append(
            PlaylistSegment(
                msn=msn, uri=posixpath.relpath(seg.segment_key, base), duration=seg.duration,
                init_uri=init_uri, program_date_time=pdt,
                discontinuity=discontinuity, gap=seg.gap,
            )
        )  # fmt: skip
        r.discontinuity_next = False
        r.last_init = init_uri
        st.next_msn = max(st.next_msn, msn + 1)
        if seg.gap:
            return
        if seg.duration > 0:
            bits = seg.size * 8
            r.peak_bps = max(r.peak_bps, int(bits / seg.duration))
            r.total_bits += bits
            r.total_seconds += seg.duration
        r.codecs = seg.codecs or r.codecs
        r.width, r.height = seg.width or r.width, seg.height or r.height
        if seg.frame_rate and (seg.duration >= 0.9 * self.target_duration or not r.frame_rate):
            r.frame_rate = seg.frame_rate  # a short last segment is a poor estimate

    async def _put_playlist(self, st: StreamState, r: RenditionState) -> None:
        if not self._may_write(st.name):
            return
        key = media_playlist_key(st.name, r.name)
        floor = self._floor.get(key, 0)
        if r.playlist.next_msn < floor and not r.playlist.ended:
            log.warning("%s: not writing %s behind its stored copy (%d < %d)", st.name, r.name,
                        r.playlist.next_msn, floor)  # fmt: skip
            return
        self._floor.pop(key, None)
        await self.store.put(key, r.playlist.render().encode())

    async def _write_master(self, st: StreamState, force: bool = False) -> None:
        ready = {n for n, r in st.renditions.items() if r.playlist.segments and r.codecs}
        if st.expected - ready:
            return  # list every rendition at once, or players miss the late ones
        names = sorted(ready & st.expected or ready)
        audio = st.renditions.get("audio") if "audio" in names else None
        variants = []
        for n in names:
            if n == "audio":
                continue
            v = st.renditions[n].variant()
            if audio is not None:
                a = audio.variant()
                if a.codecs in v.codecs.split(","):  # the source: its own audio is muxed in
                    v = replace(v, audio_group="audio")
                else:  # a video-only rendition plays with the shared audio rendition
                    v = replace(v, bandwidth=v.bandwidth + a.bandwidth,
                                average_bandwidth=v.average_bandwidth + a.average_bandwidth,
                                codecs=f"{v.codecs},{a.codecs}", audio_group="audio")  # fmt: skip
            variants.append(v)
        text = render_multivariant(variants, AudioRendition("audio.m3u8") if audio else None)
        if not self._may_write(st.name):
            return
        if text != st.master_text or force:
            await self.store.put(multivariant_key(st.name), text.encode())
            st.master_text = text
