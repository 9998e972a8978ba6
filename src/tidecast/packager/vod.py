"""VOD playlists of a recorded broadcast (or a clip of it), from its recorded segments.

Written once when a broadcast ends (or is recovered after a crash), next to
the media: ``hls/<stream>/<broadcast>/master.m3u8`` plus one media playlist per
rendition, EXT-X-PLAYLIST-TYPE:VOD with EXT-X-ENDLIST, a discontinuity where a
reconnect or new encoding parameters break the timeline, EXT-X-GAP where a
segment could not be made.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict

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
    """Map of store key -> playlist bytes, every URI relative to ``base_key``."""
    by_rendition: dict[str, list[SegmentRow]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: (r.rendition, r.sequence)):
        if first_sequence is not None and r.sequence < first_sequence:
            continue
        if last_sequence is not None and r.sequence > last_sequence:
            continue
        by_rendition[r.rendition].append(r)
    out: dict[str, bytes] = {}
    variants: dict[str, Variant] = {}
    for name, segs in by_rendition.items():
        pl = MediaPlaylist(
            window=max(3, len(segs)), target_duration=max(round(s.duration) for s in segs)
        )
        pl.playlist_type = "VOD"
        last_init, last_part = "", segs[0].part
        for i, s in enumerate(segs):
            init = posixpath.relpath(s.init_key, base_key) if s.init_key else last_init
            if not init:
                continue
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
