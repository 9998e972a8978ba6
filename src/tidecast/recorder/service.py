"""Recorder: persists each listed segment, finishes broadcasts into VOD, recovers after
a crash, deletes by retention policy.

The packager calls ``record`` before it lists a segment (so after a crash every
listed segment is in the database) and ``finished`` once a broadcast's
playlists have ended. ``recover`` runs at start-up: broadcasts left open by a
crash are closed and written out as VOD.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from tidecast import ffmpeg, keys
from tidecast.db.leases import Fence
from tidecast.db.recordings import (
    BroadcastInfo,
    BroadcastNotFound,
    ClipInfo,
    Recordings,
    SegmentRow,
)
from tidecast.db.transient import call
from tidecast.messages import SegmentReady
from tidecast.packager.hls import stamp_epoch
from tidecast.packager.vod import vod_playlists
from tidecast.store.base import ObjectNotFound, Store

log = logging.getLogger("tidecast.recorder")


def broadcast_dir(stream: str, broadcast: str) -> str:
    return keys.broadcast_prefix(stream, broadcast)


def clip_dir(stream: str, broadcast: str, clip: str) -> str:
    return keys.clip_prefix(stream, broadcast, clip)


PutPlaylist = Callable[[str, bytes, int], Awaitable[None]]  # key, data, writer's lease epoch


class Recorder:
    def __init__(
        self, store: Store, recordings: Recordings, *, put_playlist: PutPlaylist | None = None,
        deadline: float = 2.0,
    ) -> None:  # fmt: skip
        self.store = store
        self.recordings = recordings
        # VOD playlists are fenced like live ones when the packager has a lease
        self.put_playlist: PutPlaylist = put_playlist or self._plain_put
        self.deadline = deadline  # seconds each database call retries (the caller retries more)
        self._recorded: dict[str, bool] = {}  # broadcast -> recording switched on

    async def _plain_put(self, key: str, data: bytes, epoch: int) -> None:
        await self.store.put(key, data)

    async def _is_recorded(self, broadcast: str) -> bool:
        if broadcast not in self._recorded:
            info = await asyncio.to_thread(self.recordings.get, broadcast)
            self._recorded[broadcast] = info.recorded
        return self._recorded[broadcast]

    async def record(
        self, seg: SegmentReady, program_date_time: float, *, heal: bool = False,
        fence: Fence | None = None,
    ) -> None:  # fmt: skip
        """One segment row (kept even with recording off: rows close the broadcast after
        a crash). ``heal``: the real segment for one recorded as a gap before."""
        row = SegmentRow(
            seg.rendition, seg.sequence, seg.part, seg.start, seg.duration, seg.init_key,
            seg.segment_key, seg.size, seg.gap, seg.codecs, seg.width, seg.height,
            seg.frame_rate, program_date_time,
        )  # fmt: skip
        if heal and not seg.gap:
            await call("heal_segment", self.recordings.heal_segment, seg.broadcast, row, fence,
                       deadline=self.deadline)  # fmt: skip
        else:
            await call("record_segment", self.recordings.record_segment, seg.broadcast, row, fence,
                       deadline=self.deadline)  # fmt: skip

    async def finished(self, stream: str, broadcast: str, *, fence: Fence | None = None) -> BroadcastInfo:
        info = await call("finish", self.recordings.finish, broadcast, datetime.now(UTC), "ended", fence,
                          deadline=self.deadline)  # fmt: skip
        self._recorded.pop(broadcast, None)
        if not info.recorded:
            removed = await self.store.delete_prefix(keys.broadcast_prefix(stream, broadcast))
            log.info("%s: recording is off; removed %d objects of %s", stream, removed, broadcast)
            return info
        await self.write_vod(info, fence=fence)
        return info

    async def rewrite_vod(self, broadcast: str, *, fence: Fence | None = None) -> None:
        """Write a VOD again after some of its segments healed (nothing if it is not VOD
        yet: ``finished`` will write it whole, or it was deleted)."""
        try:
            info = await call("get", self.recordings.get, broadcast, deadline=self.deadline)
        except BroadcastNotFound:
            return
        if info.vod_ready:
            await self.write_vod(info, poster=False, fence=fence)

    async def write_vod(
        self, info: BroadcastInfo, *, poster: bool = True, fence: Fence | None = None
    ) -> None:
        rows = await call("segments", self.recordings.segments, info.id, deadline=self.deadline)
        if not rows:
            return
        base = keys.broadcast_prefix(info.stream, info.id)
        epoch = fence.epoch if fence is not None else 0
        for key, data in vod_playlists(rows, base).items():
            await self.put_playlist(key, stamp_epoch(data.decode(), epoch).encode(), epoch)
        if poster:
            await self._poster(base, rows)
        gaps = sum(1 for r in rows if r.gap)
        log.info("%s: broadcast %s is VOD (%.1f s, %s%s)", info.stream, info.id, info.duration,
                 ", ".join(info.renditions), f"; {gaps} segments are gaps" if gaps else "")  # fmt: skip

    async def _poster(self, base: str, rows: list[SegmentRow]) -> None:
        video = [r for r in rows if r.height and not r.gap]
        if not video:
            return
        top = max(r.height for r in video)
        segs = [r for r in video if r.height == top]
        mid = segs[len(segs) // 2]
        with tempfile.TemporaryDirectory(prefix="tidecast-poster-") as tmp:
            src = Path(tmp) / "in.mp4"
            out = Path(tmp) / "poster.jpg"
            try:
                data = await self.store.get(mid.init_key) + await self.store.get(mid.segment_key)
            except ObjectNotFound as exc:  # a poster is a nicety: the VOD is written without it
                log.warning("no poster for %s: %s is not stored", base, exc)
                return
            await asyncio.to_thread(src.write_bytes, data)
            try:
                await ffmpeg.run(
                    ffmpeg.poster_args(str(src), str(out), exe=ffmpeg.ffmpeg_exe()), 30, "poster"
                )
            except ffmpeg.FFmpegError as exc:
                log.warning("no poster for %s: %s", base, exc)
                return
            await self.store.put(f"{base}/poster.jpg", await asyncio.to_thread(out.read_bytes))  # keys.poster

    async def write_clip(self, clip: ClipInfo) -> None:
        rows = await asyncio.to_thread(self.recordings.segments, clip.broadcast)
        base = clip_dir(clip.stream, clip.broadcast, clip.id)
        for key, data in vod_playlists(rows, base, clip.first_sequence, clip.last_sequence).items():
            await self.store.put(key, data)

    async def recover(self, stale_after: float | None = None) -> list[str]:
        """Close broadcasts a crash left open and make them playable as VOD.

        Alone (``tidecast serve``) every open broadcast at start-up was left by a
        crash. In a deployment other nodes may be streaming right now: only
        broadcasts with nothing new for ``stale_after`` seconds are closed.
        """
        recovered = []
        for bid in await asyncio.to_thread(self.recordings.open_broadcasts):
            if stale_after is not None:
                active = await asyncio.to_thread(self.recordings.last_activity, bid)
                if time.time() - active < stale_after:
                    continue
            last = await asyncio.to_thread(self.recordings.last_segment_time, bid)
            ended = datetime.fromtimestamp(last, UTC) if last else datetime.now(UTC)
            info = await asyncio.to_thread(
                self.recordings.finish, bid, ended, "recovered after a restart"
            )
            if info.recorded:
                await self.write_vod(info)
            recovered.append(bid)
            log.warning("%s: broadcast %s was left open; closed and kept as VOD", info.stream, bid)
        return recovered

    async def delete(self, broadcast: str) -> int:
        info = await asyncio.to_thread(self.recordings.get, broadcast)
        # the database first: it refuses a live broadcast (BroadcastLive), whatever this node believes
        await asyncio.to_thread(self.recordings.delete, broadcast)
        removed = await self.store.delete_prefix(broadcast_dir(info.stream, broadcast))
        log.info("%s: deleted broadcast %s (%d objects)", info.stream, broadcast, removed)
        return removed

    async def apply_retention(self, live: set[str] | None = None) -> list[str]:
        """Delete every ended broadcast its stream's policy no longer keeps."""
        expired = await asyncio.to_thread(self.recordings.expired, datetime.now(UTC))
        deleted = []
        for b in expired:
            if live and b.id in live:
                continue
            await self.delete(b.id)
            deleted.append(b.id)
        return deleted
