"""LL-HLS media playlists (RFC 8216bis): parts, preload hints, rendition reports, delta
updates; each rendering is checked against the RFC rules and read with the m3u8 library."""

from __future__ import annotations

import m3u8
import pytest
from tests.packager.ll import (
    apply_delta,
    check_ll,
    complete,
    delta,
    hint,
    in_progress,
    seg_list,
    skipped,
)

from tidecast.packager.hls import (
    MediaPlaylist,
    PlaylistPart,
    PlaylistSegment,
    RenditionReport,
    parse_media_playlist,
)

T0 = 1_700_000_000.0
PART = 0.25  # durations that read back exactly
PARTS = 8  # a segment's


def part(msn: int, i: int, dur: float = PART, **kw: bool) -> PlaylistPart:
    return PlaylistPart(i, f"b1/720p/{msn:06d}.{i}.m4s", dur, independent=i == 0, **kw)


def init(msn: int) -> str:
    return "b1/720p/init-a.mp4" if msn < 7 else "b1/720p/init-b.mp4"


def segment(msn: int, parts: tuple[PlaylistPart, ...] = (), dur: float = 2.0, **kw: object) -> PlaylistSegment:
    return PlaylistSegment(msn, f"b1/720p/{msn:06d}.m4s", dur, init(msn), T0 + 2 * msn,
                           discontinuity=msn == 7, parts=parts, **kw)  # type: ignore[arg-type]  # fmt: skip


def live(window: int = 10) -> MediaPlaylist:
    return MediaPlaylist(window, 2.0, low_latency=True, part_target=PART)


def grow(pl: MediaPlaylist, msn: int, n_parts: int = PARTS) -> list[str]:
    """Make segment ``msn`` part by part, then complete it; every rendering on the way."""
    out = []
    for i in range(n_parts):
        pl.add_part(part(msn, i), msn=msn, init_uri=init(msn), program_date_time=T0 + 2 * msn,
                    discontinuity=msn == 7)  # fmt: skip
        pl.preload_hint = part(msn, i + 1).uri if i + 1 < n_parts else part(msn + 1, 0).uri
        out.append(pl.render())
    assert pl.in_progress is not None
    pl.append(segment(msn, pl.in_progress.parts))
    pl.preload_hint = part(msn + 1, 0).uri
    out.append(pl.render())
    return out


def test_parts_of_the_live_edge_only_and_never_changed_once_listed() -> None:
    pl = live()
    pl.rendition_reports = (RenditionReport("360p.m3u8", 0, 2), RenditionReport("audio.m3u8", 0))
    listed: dict[str, float] = {}
    for msn in range(12):
        for text in grow(pl, msn):
            parsed = check_ll(text)
            for s in parsed.segments:
                for p in s.parts:
                    assert listed.setdefault(p.uri, p.duration) == p.duration  # never rewritten
            segs = complete(parsed)
            # the parts of the last 3 complete segments and of the one in progress
            assert [bool(s.parts) for s in segs] == [i >= len(segs) - 3 for i in range(len(segs))]
            nxt = in_progress(parsed)
            assert hint(parsed) == (part(msn, len(nxt)).uri if nxt and len(nxt) < PARTS else part(msn + 1, 0).uri)
            assert [(r.uri, r.last_msn, r.last_part) for r in parsed.rendition_reports] == [
                ("360p.m3u8", 0, 2), ("audio.m3u8", 0, None)]  # fmt: skip
    parsed = m3u8.loads(pl.render())
    assert parsed.media_sequence == 2 and parsed.part_inf.part_target == PART
    assert parsed.server_control.part_hold_back == 3 * PART
    assert parsed.server_control.can_skip_until == 12.0
    first = complete(parsed)[-1].parts[0]
    assert first.independent == "YES" and all(p.independent is None for p in complete(parsed)[-1].parts[1:])
    # the EXT-X-MAP and EXT-X-DISCONTINUITY of segment 7 came before its first part
    assert complete(parsed)[5].discontinuity and complete(parsed)[5].init_section.uri == "b1/720p/init-b.mp4"


def test_an_ended_playlist_has_no_hint_no_reports_and_no_unfinished_segment() -> None:
    pl = live()
    grow(pl, 0)
    pl.add_part(part(1, 0), msn=1, init_uri=init(1), program_date_time=T0 + 2)
    pl.rendition_reports = (RenditionReport("360p.m3u8", 1, 0),)
    pl.end()
    text = pl.render()
    parsed = check_ll(text, live=False)
    assert parsed.is_endlist and parsed.preload_hint is None and not parsed.rendition_reports
    assert "000001.0.m4s" not in text and len(parsed.segments) == 1
    assert delta(pl.render()) == text  # 6.2.5.1: _HLS_skip is ignored with ENDLIST


def test_part_rules_are_enforced() -> None:
    pl = live()
    with pytest.raises(ValueError, match="longer than the part target"):
        pl.add_part(part(0, 0, 0.3), msn=0, init_uri=init(0))
    with pytest.raises(ValueError, match="starts with part 1"):
        pl.add_part(part(0, 1), msn=0, init_uri=init(0))
    pl.add_part(part(0, 0), msn=0, init_uri=init(0))
    with pytest.raises(ValueError, match="does not follow"):
        pl.add_part(part(0, 2), msn=0, init_uri=init(0))
    with pytest.raises(ValueError, match="change parts already listed"):
        pl.append(segment(0, (part(0, 0, 0.2), part(0, 1))))
    assert pl.in_progress is not None and len(pl.in_progress.parts) == 1  # still as it was
    with pytest.raises(ValueError, match="gap segment"):
        pl.append(segment(0, (part(0, 0),), gap=True))
    with pytest.raises(ValueError, match="need a part target"):
        MediaPlaylist(3, 2.0, low_latency=True).add_part(part(0, 0), msn=0, init_uri=init(0))
    pl.append(segment(0))  # listed whole: the parts of the segment in progress go
    assert pl.in_progress is None and "EXT-X-PART:" not in pl.render()


def test_low_latency_without_parts_advertises_no_part_target() -> None:
    pl = MediaPlaylist(5, 2.0, low_latency=True)
    pl.append(segment(0))
    text = pl.render()
    parsed = check_ll(text)
    assert "PART-INF" not in text and parsed.server_control.part_hold_back is None


def history() -> list[tuple[str, str]]:
    """(full, delta) renderings of a playlist as it grows: a discontinuity, a new init
    segment, a gap and a long segment on the way, a 16-segment window sliding."""
    pl = MediaPlaylist(16, 2.0, low_latency=True, part_target=PART)
    out = []
    for msn in range(30):
        if msn in (9, 10):
            pl.append(segment(msn, gap=msn == 9, dur=2.0 if msn == 9 else 3.0))  # listed whole
        else:
            grow(pl, msn)
        out.append((pl.render(), delta(pl.render())))
    return out


def test_a_delta_update_merged_onto_the_last_full_playlist_gives_the_full_playlist() -> None:
    runs = history()
    for (prev, _), (full, delta_text) in zip(runs, runs[1:], strict=False):
        check_ll(delta_text)
        f, d = m3u8.loads(full), m3u8.loads(delta_text)
        assert apply_delta(prev, delta_text) == seg_list(f)
        # the header is the full playlist's: media and discontinuity sequence unchanged (4.4.5.2)
        assert (d.media_sequence, d.discontinuity_sequence, d.target_duration) == (
            f.media_sequence, f.discontinuity_sequence, f.target_duration)  # fmt: skip
        # everything after the skip is exactly as in the full playlist (6.2.5.1 "all tags
        # that were not skipped MUST remain"), the init segment in force included
        n = skipped(d)
        assert complete(d) and complete(d)[0].init_section is not None
        assert [s.dumps(None) for s in complete(d)] == [s.dumps(None) for s in complete(f)[n:]]
        assert in_progress(d) == in_progress(f) and hint(d) == hint(f)
        # only segments further from the end than the Skip Boundary were skipped
        durations = [s.duration for s in complete(f)]
        until = f.server_control.can_skip_until
        for i in range(len(durations)):
            assert (sum(durations[i + 1 :]) > until) == (i < n), (i, n)
    assert max(skipped(m3u8.loads(d)) for _, d in runs) >= 3


def test_delta_skipping_the_init_change_repeats_the_map() -> None:
    full, delta = next((f, d) for f, d in history() if skipped(m3u8.loads(d)) + m3u8.loads(f).media_sequence > 7)
    assert '#EXT-X-MAP:URI="b1/720p/init-b.mp4"' in delta.split("#EXT-X-SKIP", 1)[1]
    assert "b1/720p/init-a.mp4" not in delta and "#EXT-X-DISCONTINUITY\n" not in delta  # went with segment 7


def test_delta_is_the_full_playlist_when_nothing_is_old_enough() -> None:
    pl = live()
    for msn in range(5):
        grow(pl, msn)
    assert delta(pl.render()) == pl.render()
    plain = MediaPlaylist(5, 2.0)
    plain.append(segment(0))
    assert delta(plain.render()) == plain.render()  # no CAN-SKIP-UNTIL: nothing to skip


def test_an_ll_playlist_reads_back_the_same() -> None:
    pl = live(window=6)
    for msn in range(9):
        if msn == 4:
            pl.append(segment(4, gap=True))
        else:
            grow(pl, msn)
    pl.add_part(part(9, 0), msn=9, init_uri=init(9), program_date_time=T0 + 18)
    pl.add_part(part(9, 1, gap=True), msn=9, init_uri=init(9))
    pl.preload_hint = part(9, 2).uri
    pl.rendition_reports = (RenditionReport("360p.m3u8", 9, 1), RenditionReport("audio.m3u8", 8))
    text = pl.render()
    check_ll(text)
    back = parse_media_playlist(text, 6, 2.0)
    assert back.render() == text
    assert list(back.segments) == list(pl.segments) and back.in_progress == pl.in_progress
    assert back.part_target == PART and back.last_part == 1 and back.last_msn == 8
    assert back.report("x.m3u8") == RenditionReport("x.m3u8", 9, 1)
    with pytest.raises(ValueError, match="delta update"):
        parse_media_playlist(next(d for _, d in history() if "#EXT-X-SKIP" in d), 16, 2.0)


def test_plain_rendering_is_unchanged() -> None:
    """Without low latency the output is byte for byte what it was before parts existed."""
    pl = MediaPlaylist(window=4, target_duration=2.0)
    for n in range(6):
        pl.append(PlaylistSegment(n, f"b1/720p/{n:06d}.m4s", 2.0 if n != 3 else 2.5,
                                  "b1/720p/init-a.mp4" if n < 4 else "b2/720p/init-b.mp4", T0 + 2 * n,
                                  discontinuity=n in (2, 4), gap=n == 5))  # fmt: skip
    pl.end()
    assert pl.render() == (
        '#EXTM3U\n#EXT-X-VERSION:8\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:2\n'
        '#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI="b1/720p/init-a.mp4"\n'
        '#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:24.000Z\n#EXTINF:2.00000,\nb1/720p/000002.m4s\n'
        '#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:26.000Z\n#EXTINF:2.50000,\nb1/720p/000003.m4s\n'
        '#EXT-X-DISCONTINUITY\n#EXT-X-MAP:URI="b2/720p/init-b.mp4"\n'
        '#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:28.000Z\n#EXTINF:2.00000,\nb1/720p/000004.m4s\n'
        '#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:30.000Z\n#EXT-X-GAP\n#EXTINF:2.00000,\n'
        'b1/720p/000005.m4s\n#EXT-X-ENDLIST\n'
    )  # fmt: skip
    assert delta(pl.render()) == pl.render()
