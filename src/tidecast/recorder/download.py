"""MP4 downloads of a recording (whole or a time range), remuxed without re-encoding.

The chosen rendition's init + media segments are laid out as fragmented-MP4
pieces (one per init segment: a reconnect or new encoding parameters start a
new piece), joined by ffmpeg's concat demuxer with the shared audio rendition
alongside, and remuxed (``-c copy``) into one progressive MP4. Ranges are whole
segments: the download covers every segment that overlaps [start, end).

``Downloads`` makes each file once: an ended broadcast's MP4 is stored under
``keys.download`` (named by a fingerprint of the very segments it holds, so a
recording that healed gets a new one) and served from the store afterwards;
concurrent requests for one file wait for the one ffmpeg that makes it, and at
most ``max_builds`` files are made at once. Work files live in one directory
of tidecast's own (emptied at start-up), each build's removed when it ends,
whatever the outcome. A live broadcast's download (it still grows) is made per
request into that directory and deleted once sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

from tidecast import ffmpeg, keys
from tidecast.db.recordings import BroadcastInfo, SegmentRow
from tidecast.metrics import REGISTRY, Registry
from tidecast.store.base import Store
from tidecast.store.factory import unwrap
from tidecast.store.local import LocalStore

log = logging.getLogger("tidecast.recorder.download")

BUILD_TIMEOUT = 600.0  # s one ffmpeg remux may take


class DownloadError(ValueError):
    pass


def pick_rendition(rows: list[SegmentRow], rendition: str | None) -> str:
    video = {r.rendition: r.height for r in rows if r.rendition != "audio"}
    if rendition:
        if rendition not in video:
            raise DownloadError(
                f"no rendition {rendition!r}; have {', '.join(sorted(video)) or 'none'}"
            )
        return rendition
    if not video:
        raise DownloadError("the recording has no video")
    return max(video, key=lambda n: video[n])


def select(
    rows: list[SegmentRow], rendition: str, start: float | None, end: float | None
) -> list[SegmentRow]:
    segs = [r for r in rows if r.rendition == rendition and not r.gap]
    if not segs:
        return []
    t0 = segs[0].program_date_time
    lo = 0.0 if start is None else start
    hi = float("inf") if end is None else end
    if hi <= lo:
        raise DownloadError("end must be after start")
    return [
        r
        for r in segs
        if r.program_date_time - t0 < hi and r.program_date_time - t0 + r.duration > lo
    ]


async def _write_pieces(store: Store, segs: list[SegmentRow], workdir: Path, name: str) -> Path:
    lines = []
    for i, (init_key, group) in enumerate(groupby(segs, key=lambda r: r.init_key)):
        piece = workdir / f"{name}-{i}.mp4"
        with piece.open("wb") as f:
            f.write(await store.get(init_key))
            for r in group:
                f.write(await store.get(r.segment_key))
        lines.append(f"file '{piece}'")
    listing = workdir / f"{name}.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


async def build_mp4(
    store: Store, rows: list[SegmentRow], out: Path, *, rendition: str | None = None,
    start: float | None = None, end: float | None = None,
) -> tuple[str, float]:  # fmt: skip
    """Write the MP4 to ``out``; returns (rendition, duration covered)."""
    name = pick_rendition(rows, rendition)
    video = select(rows, name, start, end)
    if not video:
        raise DownloadError("nothing recorded in that range")
    seqs = {r.sequence for r in video}
    has_muxed_audio = "mp4a" in video[0].codecs and name == "source"
    audio = [r for r in rows if r.rendition == "audio" and r.sequence in seqs and not r.gap]
    workdir = out.parent
    vlist = await _write_pieces(store, video, workdir, "video")
    alist = (
        await _write_pieces(store, audio, workdir, "audio")
        if audio and not has_muxed_audio
        else None
    )
    args = ffmpeg.remux_mp4_args(
        str(vlist), str(alist) if alist else None, str(out), ffmpeg.ffmpeg_exe()
    )
    await ffmpeg.run(args, 600, "download")
    return name, round(sum(r.duration for r in video), 3)


def fingerprint(video: list[SegmentRow], audio: list[SegmentRow], start: float | None,
                end: float | None) -> str:  # fmt: skip
    """Names exactly what a download holds: its segments (keys, sizes) and its range."""
    h = hashlib.sha256(f"{start}|{end}".encode())
    for r in (*video, *audio):
        h.update(f"|{r.rendition}/{r.sequence}/{r.segment_key}/{r.init_key}/{r.size}".encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A download ready to send: a stored object (``key``) or a work file (``path``, to be
    removed with ``cleanup`` once sent)."""

    rendition: str
    key: str | None = None
    path: Path | None = None
    cleanup: Callable[[], None] | None = None


class Downloads:
    def __init__(self, store: Store, work_root: Path, *, max_builds: int = 2,
                 registry: Registry = REGISTRY) -> None:  # fmt: skip
        self.store = store
        self.work_root = work_root
        self.builds = asyncio.Semaphore(max_builds)
        self._making: dict[str, asyncio.Task[None]] = {}
        self.made = registry.counter(
            "tidecast_download_builds_total", "MP4 downloads made (one ffmpeg remux each).", ("kind",)
        )
        self.served = registry.counter(
            "tidecast_downloads_total", "MP4 downloads sent, by where they came from.", ("source",)
        )
        shutil.rmtree(work_root, ignore_errors=True)  # what a crash left behind
        work_root.mkdir(parents=True, exist_ok=True)

    def work_dirs(self) -> int:
        return sum(1 for _ in self.work_root.iterdir())

    async def prepare(self, info: BroadcastInfo, rows: list[SegmentRow], *, ended: bool,
                      rendition: str | None, start: float | None, end: float | None) -> Prepared:  # fmt: skip
        """The file for this request: stored (made now if it is not yet), or for a live
        broadcast a work file of its own. Raises DownloadError for a request that cannot
        be met (no such rendition, nothing in range)."""
        name = pick_rendition(rows, rendition)
        video = select(rows, name, start, end)
        if not video:
            raise DownloadError("nothing recorded in that range")
        if not ended:
            path, cleanup = await self._build(rows, name, start, end, "live")
            self.served.inc(source="live")
            return Prepared(name, path=path, cleanup=cleanup)
        key = keys.download(info.stream, info.id, name, fingerprint(video, _audio(rows, video), start, end))
        if await self.store.exists(key):
            self.served.inc(source="store")
            return Prepared(name, key=key)
        task = self._making.get(key)
        if task is None:
            task = self._making[key] = asyncio.create_task(self._make(key, rows, name, start, end))
            task.add_done_callback(lambda _t: self._making.pop(key, None))
        await asyncio.shield(task)  # a client that gives up does not stop the file for the others
        self.served.inc(source="made")
        return Prepared(name, key=key)

    async def _make(self, key: str, rows: list[SegmentRow], name: str, start: float | None,
                    end: float | None) -> None:  # fmt: skip
        path, cleanup = await self._build(rows, name, start, end, "stored")
        try:
            local = unwrap(self.store)
            if isinstance(local, LocalStore):  # moved into place, not read into memory
                await asyncio.to_thread(_move_into, path, local.path_for(key))
            else:
                await self.store.put(key, await asyncio.to_thread(path.read_bytes))
        finally:
            cleanup()
        log.info("download %s made and stored", key)

    async def _build(self, rows: list[SegmentRow], name: str, start: float | None,
                     end: float | None, kind: str) -> tuple[Path, Callable[[], None]]:  # fmt: skip
        async with self.builds:
            workdir = Path(tempfile.mkdtemp(prefix="dl-", dir=self.work_root))

            def cleanup() -> None:
                shutil.rmtree(workdir, ignore_errors=True)

            try:
                out = workdir / "out.mp4"
                await build_mp4(self.store, rows, out, rendition=name, start=start, end=end)
                self.made.inc(kind=kind)
                await asyncio.to_thread(_drop_pieces, workdir, out)  # not needed any more
            except BaseException:
                cleanup()
                raise
            return out, cleanup

    async def aclose(self) -> None:
        tasks = list(self._making.values())
        for task in tasks:
            task.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, Exception):
                log.warning("a download being made at shutdown failed: %r", result)


def _drop_pieces(workdir: Path, keep: Path) -> None:
    for extra in workdir.iterdir():
        if extra != keep:
            extra.unlink()


def _audio(rows: list[SegmentRow], video: list[SegmentRow]) -> list[SegmentRow]:
    seqs = {r.sequence for r in video}
    return [r for r in rows if r.rendition == "audio" and r.sequence in seqs and not r.gap]


def _move_into(src: Path, dest: Path) -> None:
    """Atomically: a reader sees the whole file or none (a copy first if across devices)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.move(str(src), tmp)
    os.replace(tmp, dest)

