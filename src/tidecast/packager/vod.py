"""VOD playlists of a recorded broadcast (or a clip of it), from its recorded segments.

Written once when a broadcast ends (or is recovered after a crash), next to
the media: ``hls/<stream>/<broadcast>/master.m3u8`` plus one media playlist per
rendition, EXT-X-PLAYLIST-TYPE:VOD with EXT-X-ENDLIST, a discontinuity where a
reconnect or new encoding parameters break the timeline, EXT-X-GAP where a
segment could not be made.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections import defaultdict

from tidecast import keys
from tidecast.db.recordings import SegmentRow
from tidecast.packager.hls import (
    AudioRendition,
    MediaPlaylist,
    PlaylistSegment,
    Variant,
    render_multivariant,
)


def vod_playlists(
    rows: list[SegmentRow], base_key: str, first_sequence: int | None = None,
    last_sequence: int | None = None,
) -> dict[str, bytes]:  # fmt: skip
    """Map of store key -> playlist bytes, every URI relative to ``base_key``.

    Every rendition lists every sequence number the broadcast has (in any
    rendition): one that has no row of its own (its segment was never recorded) is
    an EXT-X-GAP with the duration the other renditions give it, so all renditions
    stay aligned and the VOD always plays through.
    """
    rows = [r for r in rows if (first_sequence is None or r.sequence >= first_sequence)
            and (last_sequence is None or r.sequence <= last_sequence)]  # fmt: skip
    by_rendition: dict[str, dict[int, SegmentRow]] = defaultdict(dict)
    known: dict[int, SegmentRow] = {}  # sequence -> a row of it, real ones preferred
    for r in sorted(rows, key=lambda r: (r.rendition, r.sequence)):
        by_rendition[r.rendition][r.sequence] = r
        if r.sequence not in known or (known[r.sequence].gap and not r.gap):
            known[r.sequence] = r
    # a broadcast's segments are numbered 0..N-1 with no hole: one no rendition recorded
    # (its rows were lost) is a gap in every rendition, timed from its neighbours
    for n in range(min(known, default=0), max(known, default=-1)):
        if n not in known:
            known[n] = _between(known, n)
    sequences = sorted(known)
    out: dict[str, bytes] = {}
    variants: dict[str, Variant] = {}
    for name, have in by_rendition.items():
        segs = [have.get(n) or _missing(known[n], name) for n in sequences]
        first_init = next((s.init_key for s in segs if s.init_key), "")
        pl = MediaPlaylist(
            window=max(3, len(segs)), target_duration=max(round(s.duration) for s in segs)
        )
        pl.playlist_type = "VOD"
        last_init, last_part = "", segs[0].part
        for i, s in enumerate(segs):
            if s.init_key:
                init = posixpath.relpath(s.init_key, base_key)
            elif last_init or first_init:  # a gap: the init in force (or the first one)
                init = last_init or posixpath.relpath(first_init, base_key)
            else:
                continue  # a rendition that never had a segment of its own
            pl.append(PlaylistSegment(
                msn=i, uri=posixpath.relpath(s.segment_key, base_key), duration=s.duration,
                init_uri=init, program_date_time=s.program_date_time or None,
                discontinuity=bool(last_init) and (init != last_init or s.part != last_part),
                gap=s.gap,
            ))  # fmt: skip
            last_init, last_part = init, s.part
        pl.end()
        out[f"{base_key}/{name}.m3u8"] = pl.render().encode()
        real = [s for s in segs if not s.gap and s.duration > 0]
        if real:
            peak = max(int(s.size * 8 / s.duration) for s in real)
            avg = int(sum(s.size for s in real) * 8 / sum(s.duration for s in real))
            top = max(real, key=lambda s: s.height)
            variants[name] = Variant(f"{name}.m3u8", peak, avg, top.codecs, top.width, top.height,
                                     top.frame_rate)  # fmt: skip
    audio = variants.pop("audio", None)
    listed = []
    for v in variants.values():
        if audio is not None and audio.codecs not in v.codecs.split(","):
            v = Variant(v.uri, v.bandwidth + audio.bandwidth, v.average_bandwidth + audio.average_bandwidth,
                        f"{v.codecs},{audio.codecs}", v.width, v.height, v.frame_rate, "audio")  # fmt: skip
        elif audio is not None:
            v = Variant(v.uri, v.bandwidth, v.average_bandwidth, v.codecs, v.width, v.height,
                        v.frame_rate, "audio")  # fmt: skip
        listed.append(v)
    if not listed and audio is not None:  # an audio-only broadcast
        listed, audio = [audio], None
    out[f"{base_key}/master.m3u8"] = render_multivariant(
        listed, AudioRendition("audio.m3u8") if audio else None
    ).encode()
    return out


def _missing(like: SegmentRow, rendition: str) -> SegmentRow:
    """A gap row for a sequence ``rendition`` has no row of (it was never recorded)."""
    where = keys.parse(like.segment_key)
    key = (keys.segment(where.stream, where.broadcast, rendition, like.sequence) if where
           else posixpath.join(posixpath.dirname(posixpath.dirname(like.segment_key)), rendition,
                               f"{like.sequence:06d}.m4s"))  # fmt: skip
    return dataclasses.replace(like, rendition=rendition, init_key="", segment_key=key, size=0,
                               gap=True, codecs="", width=0, height=0, frame_rate=0.0)  # fmt: skip


def _between(known: dict[int, SegmentRow], n: int) -> SegmentRow:
    """A gap row for sequence ``n``, which no rendition recorded: it starts where the last
    one before it ends and lasts until the next one after it starts."""
    before = max(k for k in known if k < n)
    after = min(k for k in known if k > n)
    prev, nxt = known[before], known[after]
    start = prev.start + prev.duration
    duration = (nxt.start - start) / (after - before - 1)  # the missing run shares the time
    duration = duration if duration > 0 else prev.duration
    pdt = prev.program_date_time + prev.duration if prev.program_date_time else 0.0
    gap = _missing(prev, prev.rendition)
    return dataclasses.replace(gap, sequence=n, start=start, duration=duration, program_date_time=pdt,
                               segment_key=gap.segment_key.replace(f"{prev.sequence:06d}.m4s", f"{n:06d}.m4s"))  # fmt: skip
