"""Playlist rendering follows RFC 8216 and parses with the m3u8 library."""

from __future__ import annotations

import m3u8
import pytest

from tidecast.packager.hls import MediaPlaylist, PlaylistSegment, Variant, render_multivariant


def seg(msn: int, dur: float = 2.0, init: str = "b1/source/init0.mp4", **kw: object) -> PlaylistSegment:
    return PlaylistSegment(msn, f"b1/source/{msn:06d}.m4s", dur, init, 1_700_000_000 + 2 * msn, **kw)  # type: ignore[arg-type]


def test_sliding_window_and_media_sequence() -> None:
    pl = MediaPlaylist(window=3, target_duration=2)
    for i in range(5):
        pl.append(seg(i))
    parsed = m3u8.loads(pl.render())
    assert parsed.media_sequence == 2
    assert [s.uri for s in parsed.segments] == [f"b1/source/{i:06d}.m4s" for i in (2, 3, 4)]
    assert parsed.target_duration == 2
    assert parsed.segments[0].init_section.uri == "b1/source/init0.mp4"
    assert all(s.program_date_time is not None for s in parsed.segments)
    assert not parsed.is_endlist


def test_target_duration_covers_every_extinf_and_never_shrinks() -> None:
    pl = MediaPlaylist(window=3, target_duration=2)
    pl.append(seg(0, 2.4))
    pl.append(seg(1, 4.6))  # a long GOP
    for i in range(2, 6):
        pl.append(seg(i, 2.0))
    parsed = m3u8.loads(pl.render())
    assert parsed.target_duration == 5
    assert all(round(s.duration) <= parsed.target_duration for s in parsed.segments)


def test_discontinuity_and_its_sequence_number() -> None:
    pl = MediaPlaylist(window=3, target_duration=2)
    pl.append(seg(0))
    pl.append(seg(1))
    pl.append(seg(2, init="b2/source/init0.mp4", discontinuity=True))
    text = pl.render()
    assert text.count("#EXT-X-DISCONTINUITY\n") == 1
    assert text.count("#EXT-X-MAP") == 2
    parsed = m3u8.loads(text)
    assert parsed.segments[2].discontinuity
    assert parsed.segments[2].init_section.uri == "b2/source/init0.mp4"
    for i in range(3, 6):
        pl.append(seg(i, init="b2/source/init0.mp4"))
    parsed = m3u8.loads(pl.render())
    assert parsed.discontinuity_sequence == 1
    assert not any(s.discontinuity for s in parsed.segments)


def test_end_and_gap() -> None:
    pl = MediaPlaylist(window=4, target_duration=2)
    pl.append(seg(0))
    pl.append(seg(1, gap=True))
    pl.end()
    text = pl.render()
    assert "#EXT-X-GAP" in text
    assert m3u8.loads(text).is_endlist
    pl.append(seg(2))  # a publisher came back: the playlist is live again
    assert not m3u8.loads(pl.render()).is_endlist


def test_out_of_order_append_is_refused() -> None:
    pl = MediaPlaylist(window=4, target_duration=2)
    pl.append(seg(3))
    with pytest.raises(ValueError):
        pl.append(seg(3))


def test_multivariant() -> None:
    text = render_multivariant(
        [
            Variant("480p.m3u8", 1_400_000, 1_200_000, "avc1.4d401e,mp4a.40.2", 854, 480, 30),
            Variant("source.m3u8", 6_100_000, 5_000_000, "avc1.640028,mp4a.40.2", 1920, 1080, 29.97),
        ]
    )
    parsed = m3u8.loads(text)
    assert parsed.is_variant
    first, second = parsed.playlists
    assert first.uri == "source.m3u8"  # highest bandwidth first
    assert first.stream_info.bandwidth == 6_100_000
    assert first.stream_info.average_bandwidth == 5_000_000
    assert first.stream_info.resolution == (1920, 1080)
    assert first.stream_info.codecs == "avc1.640028,mp4a.40.2"
    assert first.stream_info.frame_rate == pytest.approx(29.97)
    assert second.stream_info.resolution == (854, 480)


def test_a_rendered_playlist_reads_back_the_same() -> None:
    """A packager taking a stream over continues from the stored playlist."""
    from tidecast.packager.hls import parse_media_playlist

    pl = MediaPlaylist(window=4, target_duration=2.0)
    for n in range(6):
        pl.append(seg(n, 2.0 if n != 3 else 2.5, init="b1/source/init0.mp4" if n < 4 else "b2/source/init0.mp4",
                      discontinuity=n in (2, 4), gap=n == 5))  # fmt: skip
    pl.append(seg(6, discontinuity=True))
    back = parse_media_playlist(pl.render(), 4, 2.0)
    assert back.render() == pl.render()
    assert list(back.segments) == list(pl.segments) and back.discontinuity_sequence == 1
    pl.end()
    assert parse_media_playlist(pl.render(), 4, 2.0).ended
