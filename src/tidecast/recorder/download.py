"""MP4 downloads of a recording (whole or a time range), remuxed without re-encoding.

The chosen rendition's init + media segments are laid out as fragmented-MP4
pieces (one per init segment: a reconnect or new encoding parameters start a
new piece), joined by ffmpeg's concat demuxer with the shared audio rendition
alongside, and remuxed (``-c copy``) into one progressive MP4. Ranges are whole
segments: the download covers every segment that overlaps [start, end).
"""

from __future__ import annotations

from itertools import groupby
from pathlib import Path

from tidecast import ffmpeg
from tidecast.db.recordings import SegmentRow
from tidecast.store.base import Store


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
