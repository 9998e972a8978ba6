"""Checks every LL-HLS playlist test uses: RFC 8216bis rules, read with the m3u8 library."""

from __future__ import annotations

from typing import Any

import m3u8

from tidecast.origin.blocking import Directives, decide, delta_update, read_playlist

SEGMENT_TAGS = ("#EXT-X-DISCONTINUITY", "#EXT-X-MAP:", "#EXT-X-PROGRAM-DATE-TIME:")


def complete(pl: m3u8.M3U8) -> list[Any]:
    """The complete segments (m3u8 puts the parts of the segment in progress in a
    segment without a URI)."""
    return [s for s in pl.segments if s.uri]


def in_progress(pl: m3u8.M3U8) -> list[Any]:
    """The parts listed after the last complete segment."""
    last = pl.segments[-1] if pl.segments else None
    return list(last.parts) if last is not None and not last.uri else []


def delta(full: str) -> str:
    """The Playlist Delta Update an origin answers ``_HLS_skip=YES`` with, from the
    stored full playlist ``full`` (the playlist as it is when nothing may be skipped)."""
    state = read_playlist(full.encode())
    if not decide(state, Directives(skip="YES")).skip:
        return full
    assert state.can_skip_until is not None
    return delta_update(full.encode(), state.can_skip_until).decode()


def check_ll(text: str, *, live: bool = True) -> m3u8.M3U8:
    """``text`` parsed, after checking
    the RFC 8216bis rules for a low-latency playlist; returns the parsed playlist."""
    # strictly: no line the library does not know, comments aside (the RFC's clients skip
    # them; the library's strict mode does not)
    m3u8.parse("\n".join(ln for ln in text.splitlines() if ln.startswith("#EXT") or not ln.startswith("#")),
               strict=True)  # fmt: skip
    pl = m3u8.loads(text)
    assert pl.version == 9  # EXT-X-SKIP needs 9 (8216bis 8)
    sc = pl.server_control
    assert sc is not None and sc.can_block_reload == "YES"
    assert sc.can_skip_until is not None and sc.can_skip_until >= 6 * pl.target_duration  # 4.4.3.8
    segs = complete(pl)
    parted = [i for i, s in enumerate(segs) if s.parts]
    assert all(i >= len(segs) - 3 for i in parted), "parts only for the last 3 segments"
    parts = [p for s in pl.segments for p in s.parts]
    if parts:
        target = pl.part_inf.part_target
        assert target is not None and sc.part_hold_back is not None
        assert sc.part_hold_back >= 3 * target - 1e-9  # 4.4.3.8 (SHOULD 3x, MUST 2x)
        for s in pl.segments:
            for i, p in enumerate(s.parts):
                assert p.duration <= target, f"{p.uri}: {p.duration} > PART-TARGET {target}"  # 4.4.4.9
                last = i == len(s.parts) - 1  # (of the segment in progress: may be its final one)
                before_gap = i + 1 < len(s.parts) and s.parts[i + 1].gap == "YES"
                if not (p.independent == "YES" or p.gap == "YES" or last or before_gap):
                    assert p.duration >= 0.85 * target, f"{p.uri} is under 85% of the part target"
            if s.parts and s.parts[0].gap != "YES":
                assert s.parts[0].independent == "YES", f"{s.parts[0].uri}: a segment starts independent"
            if s.uri and s.parts:  # a Parent Segment and its parts hold the same media (3.2)
                assert abs(sum(p.duration for p in s.parts) - s.duration) < 0.05
    # the tags of a Parent Segment come before its first part (4.4.4.9)
    seen_part = False
    for line in text.splitlines():
        if line.startswith("#EXT-X-PART:"):
            seen_part = True
        elif line.startswith("#EXTINF:"):
            seen_part = False
        elif line.startswith(SEGMENT_TAGS):
            assert not seen_part, f"{line} after a part of its segment"
    if pl.preload_hint is not None:
        assert live and not pl.is_endlist and pl.preload_hint.hint_type == "PART"  # 4.4.5.3
    assert text.count("#EXT-X-SKIP") <= 1
    return pl


def skipped(pl: m3u8.M3U8) -> int:
    return pl.skip.skipped_segments if pl.skip else 0


def hint(pl: m3u8.M3U8) -> str | None:
    return pl.preload_hint.uri if pl.preload_hint is not None else None


def seg_list(pl: m3u8.M3U8, first_msn: int | None = None) -> list[tuple[Any, ...]]:
    """(msn, uri, duration, init, discontinuity, date, gap) of each complete segment."""
    msn = pl.media_sequence if first_msn is None else first_msn
    return [
        (msn + i, s.uri, s.duration, s.init_section.uri if s.init_section else None, s.discontinuity,
         s.program_date_time, bool(s.gap_tag))
        for i, s in enumerate(complete(pl))
    ]  # fmt: skip


def apply_delta(previous_full: str, delta: str) -> list[tuple[Any, ...]]:
    """What a client gets by merging a Playlist Delta Update onto the full playlist it
    had (8216bis 6.3.7): the skipped segments come from the older copy."""
    old, d = m3u8.loads(previous_full), m3u8.loads(delta)
    skipped = d.skip.skipped_segments if d.skip else 0  # (the library gives {} for none)
    have = {row[0]: row for row in seg_list(old)}
    first = d.media_sequence
    missing = [n for n in range(first, first + skipped) if n not in have]
    assert not missing, f"the older playlist lacks skipped segments {missing}: reload in full"
    return [have[n] for n in range(first, first + skipped)] + seg_list(d, first + skipped)
