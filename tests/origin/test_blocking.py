"""The sans-I/O core of blocking playlist reload (RFC 8216bis 6.2.5): what a query asks,
what a stored LL playlist holds, and the decision between them — every branch."""

from __future__ import annotations

import pytest
from tests.llhls import ll_playlist

from tidecast.origin.blocking import (
    BadDirective,
    Directives,
    PartRef,
    PartVerdict,
    PlaylistState,
    Verdict,
    advance_part_limit,
    decide,
    delta_update,
    hinted_part,
    hold_for,
    max_hold,
    parse_directives,
    parse_part_key,
    part_wait,
    part_wait_verdict,
    read_playlist,
    satisfied,
)

KEY = "hls/s/720p.m3u8"


def state(segments: int, parts: int = 0, **kw: object) -> PlaylistState:
    return read_playlist(ll_playlist(segments, parts, **kw).encode())  # type: ignore[arg-type]


# ---------------------------------------------------------------- directives


def test_queries_without_directives_are_not_blocking() -> None:
    assert parse_directives("") is None
    assert not Directives(skip="YES").blocking and Directives(0).blocking
    assert parse_directives("v=3&cmcd=x") is None
    assert parse_directives("_HLS_push=1") is None  # an old draft's directive: ignored


@pytest.mark.parametrize(("query", "want"), [
    ("_HLS_msn=12", Directives(12)),
    ("_HLS_msn=12&_HLS_part=3", Directives(12, 3)),
    ("_HLS_part=0&_HLS_msn=0", Directives(0, 0)),
    ("_HLS_msn=12&_HLS_part=3&_HLS_skip=YES", Directives(12, 3, "YES")),
    ("_HLS_skip=v2", Directives(None, None, "v2")),
    ("x=1&_HLS_msn=%31%32&y", Directives(12)),  # percent-encoded digits, other parameters
    ("_HLS_msn=18446744073709551615", Directives(2**64 - 1)),
])  # fmt: skip
def test_directives_parse(query: str, want: Directives) -> None:
    assert parse_directives(query) == want


@pytest.mark.parametrize(("query", "message"), [
    ("_HLS_msn=", "decimal integer"),
    ("_HLS_msn=-1", "decimal integer"),
    ("_HLS_msn=+1", "decimal integer"),
    ("_HLS_msn=1.5", "decimal integer"),
    ("_HLS_msn=abc", "decimal integer"),
    ("_HLS_msn=%D9%A3", "decimal integer"),  # an Arabic-Indic digit: not ASCII
    ("_HLS_msn=" + "9" * 21, "decimal integer"),
    ("_HLS_msn=1&_HLS_part=x", "_HLS_part must be a decimal integer"),
    ("_HLS_part=2", "_HLS_part needs _HLS_msn"),
    ("_HLS_msn=1&_HLS_msn=2", "more than once"),
    ("_HLS_skip=yes", "YES or v2"),
    ("_HLS_skip=", "YES or v2"),
])  # fmt: skip
def test_bad_directives_are_refused_with_a_reason(query: str, message: str) -> None:
    with pytest.raises(BadDirective, match=message):
        parse_directives(query)


# ---------------------------------------------------------------- reading playlists


def test_reads_an_ll_playlist() -> None:
    st = state(5, 2, media_sequence=10)
    assert (st.media_sequence, st.last_msn, st.last_part, st.ended) == (10, 14, 1, False)
    assert st.target_duration == 2 and st.part_target == pytest.approx(1 / 3, abs=1e-4)
    assert st.can_block and st.can_skip_until == 12.0
    assert st.segment_parts == {12: 6, 13: 6, 14: 6}  # the last three segments list their parts
    assert st.hint == "b1/720p/000015.2.m4s"
    assert st.position == (14, 1, False)


def test_reads_the_edges() -> None:
    empty = state(0)
    assert (empty.last_msn, empty.last_part, empty.segment_parts) == (-1, -1, {})
    start = state(0, 2)
    assert (start.last_msn, start.last_part, start.hint) == (-1, 1, "b1/720p/000000.2.m4s")
    later = state(0, 2, media_sequence=5)  # no complete segment yet, the window further on
    assert (later.last_msn, later.last_part) == (4, 1) and satisfied(later, 5, 1)
    ended = state(3, ended=True)
    assert ended.ended and ended.last_part == -1 and ended.hint is None
    no_parts_yet = state(3, 0)  # a segment just completed: nothing of the next one yet
    assert (no_parts_yet.last_msn, no_parts_yet.last_part) == (2, -1)
    plain = read_playlist(b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\na.m4s\n#EXTINF:2.0,\nb.m4s\n")
    assert (plain.last_msn, plain.part_target, plain.can_block, plain.hint) == (1, None, False, None)
    assert not state(3, can_block=False).can_block


def test_reading_is_lenient_about_values_it_cannot_parse() -> None:
    st = read_playlist(b"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:x\n#EXT-X-TARGETDURATION:\n"
                       b"#EXT-X-PART-INF:PART-TARGET=nan\n#EXT-X-SERVER-CONTROL:CAN-SKIP-UNTIL=-4\n"
                       b"#EXTINF:2,\na.m4s\n#EXT-X-PRELOAD-HINT:TYPE=MAP,URI=\"init.mp4\"\n")  # fmt: skip
    assert (st.media_sequence, st.target_duration, st.part_target, st.can_skip_until) == (0, 0, None, None)
    assert st.last_msn == 0 and st.hint is None  # a hint of another TYPE is not a part
    assert read_playlist(b"#EXTINF:2,\na.m4s\n").last_msn == 0  # a segment on the first line
    assert read_playlist(b"#EXT-X-TARGETDURATION:4\n").target_duration == 4  # a tag on the first line
    assert read_playlist(b"#EXTM3U\n#EXT-X-PART-INF:PART-TARGET=abc\n").part_target is None
    # a segment whose parts the packager never saw, between two that list theirs
    text = ll_playlist(6, 1).replace('#EXT-X-PART:DURATION=0.33333,URI="b1/720p/000004.', "#X")
    assert read_playlist(text.encode()).segment_parts == {3: 6, 5: 6}


# ---------------------------------------------------------------- the decision


def test_a_playlist_that_has_it_answers_at_once() -> None:
    st = state(5, 2)  # segments 0..4 complete, parts 0..1 of segment 5
    for msn, part in [(4, None), (3, None), (5, 0), (5, 1), (4, 5), (0, 0)]:
        assert decide(st, Directives(msn, part)).verdict is Verdict.ANSWER, (msn, part)


def test_a_playlist_that_has_not_got_it_waits() -> None:
    st = state(5, 2)
    for msn, part in [(5, None), (5, 2), (6, None), (6, 0)]:
        assert decide(st, Directives(msn, part)).verdict is Verdict.WAIT, (msn, part)


def test_past_the_last_part_of_a_complete_segment_is_part_0_of_the_next() -> None:
    # RFC 8216bis 6.2.5.2: part 6 of segment 4 (which has parts 0..5) is part 0 of segment 5
    assert not satisfied(state(5, 0), 4, 6)
    assert satisfied(state(5, 1), 4, 6)
    assert satisfied(state(5, 0), 4, 5)
    assert satisfied(state(5, 0), 3, 9)  # segment 4 is complete: any later part is there
    assert satisfied(state(5, 0, part_segments=0), 4, 3)  # listed whole: its parts are long done


def test_a_playlist_without_parts_blocks_on_whole_segments() -> None:
    st = PlaylistState(last_msn=4, can_block=True, target_duration=2)
    assert decide(st, Directives(4, 3)).verdict is Verdict.ANSWER
    assert decide(st, Directives(5, 0)).verdict is Verdict.WAIT


def test_too_far_ahead_is_refused() -> None:
    st = state(5, 2)  # last segment 4
    d = decide(st, Directives(7))
    assert d.verdict is Verdict.TOO_FAR and "more than 2 segments past" in d.detail
    assert decide(st, Directives(6)).verdict is Verdict.WAIT  # 4 + 2 may be waited for
    # Advance Part Limit at a part target of 1/3 s: 9 parts past the last one listed (5.1)
    assert decide(st, Directives(5, 10)).verdict is Verdict.WAIT  # 9 ahead
    far = decide(st, Directives(5, 11))
    assert far.verdict is Verdict.TOO_FAR and "over the limit of 9" in far.detail
    assert decide(st, Directives(6, 4)).verdict is Verdict.WAIT  # 6*6+4 - (5*6+1) = 9
    assert decide(st, Directives(6, 5)).verdict is Verdict.TOO_FAR
    # nothing of the segment in progress yet: its part 0 is the next one
    assert decide(state(5, 0), Directives(5, 8)).verdict is Verdict.WAIT  # 9 past part 5 of 4
    assert decide(state(5, 0), Directives(5, 9)).verdict is Verdict.TOO_FAR
    # no complete segment lists parts: parts per segment from the target durations
    assert decide(state(2, 1, part_segments=0), Directives(2, 10)).verdict is Verdict.TOO_FAR


def test_advance_part_limit_and_hold() -> None:
    assert advance_part_limit(1 / 3) == pytest.approx(9)
    assert advance_part_limit(0.5) == 6
    assert advance_part_limit(1.0) == 3 and advance_part_limit(2.0) == 3
    assert hold_for(state(3), 6.0) == 6.0  # 3 x target duration 2
    assert hold_for(state(3, target=1), 6.0) == 3.0
    assert hold_for(state(3, target=4), 6.0) == 6.0  # capped: the edge waits no longer
    assert hold_for(None, 6.0) == 6.0 and hold_for(PlaylistState(), 5.0) == 5.0
    assert max_hold(2.0) == 6.0 and max_hold(1.5) == 6.0 and max_hold(0.5) == 3.0 and max_hold(4) == 12
    assert part_wait(state(3), 6.0) == pytest.approx(1.0)  # 3 part targets of 1/3 s
    assert part_wait(state(3, part_target=0.5), 6.0) == pytest.approx(1.5)
    assert part_wait(state(3, part_target=0.2), 6.0) == 1.0  # at least a second
    assert part_wait(None, 6.0) == 3.0 and part_wait(state(3, target=1, part_target=1.0), 2.0) == 2.0


def test_directives_that_are_ignored() -> None:
    assert decide(state(3, ended=True), Directives(99, 99)).verdict is Verdict.ANSWER  # ENDLIST
    assert decide(state(3, can_block=False), Directives(99)).verdict is Verdict.ANSWER  # no blocking
    assert decide(state(3), Directives(None, None, "YES")) == decide(state(3), Directives(skip="YES"))
    assert decide(state(3), Directives(skip="YES")).skip
    assert not decide(state(3, ended=True), Directives(skip="YES")).skip  # 6.2.5.1: ENDLIST
    assert not decide(state(3, can_block=False), Directives(skip="v2")).skip  # no CAN-SKIP-UNTIL
    waiting = decide(state(3), Directives(3, 0, "YES"))
    assert waiting.verdict is Verdict.WAIT and waiting.skip
    assert decide(state(0), Directives(0)).verdict is Verdict.WAIT  # an empty playlist waits...
    assert decide(state(0), Directives(2)).verdict is Verdict.TOO_FAR  # ...within 2 segments


# ---------------------------------------------------------------- delta updates


def test_delta_update_skips_what_is_older_than_can_skip_until() -> None:
    text = ll_playlist(20, 2, media_sequence=100, maps={110: "init-b.mp4"})
    out = delta_update(text.encode(), 12.0).decode()
    # 40 s listed; segments ending more than 12 s before the end (100..112) are skipped
    assert "#EXT-X-SKIP:SKIPPED-SEGMENTS=13\n" in out
    assert "b1/720p/000112.m4s" not in out and "b1/720p/000113.m4s" in out
    assert out.count("#EXTINF:") == 7 and "#EXT-X-MEDIA-SEQUENCE:100\n" in out
    # the init segment in force comes again before the first segment kept
    skip_at = out.index("#EXT-X-SKIP:")
    assert out.index('#EXT-X-MAP:URI="b1/720p/init-b.mp4"') > skip_at
    assert out.index('#EXT-X-MAP:URI="b1/720p/init-b.mp4"') < out.index("b1/720p/000113.m4s")
    head, tail = text.split("#EXT-X-MAP:", 1)[0], text.rsplit("b1/720p/000119.m4s\n", 1)[1]
    assert out.startswith(head) and out.endswith(tail)  # head tags, parts, hint and reports kept
    again = read_playlist(out.encode())
    assert again.last_msn == 119 - 13  # (what the skip tag stands for is the reader's business)


def test_delta_update_keeps_a_map_of_the_first_kept_segment_and_skips_nothing_when_short() -> None:
    text = ll_playlist(20, 0, maps={13: "init-c.mp4"})
    out = delta_update(text.encode(), 12.0).decode()
    assert out.count('#EXT-X-MAP:URI="b1/720p/init-c.mp4"') == 1  # not repeated: it is there
    assert "init-a.mp4" not in out
    short = ll_playlist(6, 1).encode()
    assert delta_update(short, 12.0) == short
    everything = delta_update(short, 0.0).decode()  # whatever the boundary, the last segment stays
    assert "#EXT-X-SKIP:SKIPPED-SEGMENTS=5\n" in everything and everything.count("#EXTINF:") == 1


# ---------------------------------------------------------------- parts


def test_part_keys() -> None:
    ref = parse_part_key("hls/s/b1/720p/000012.3.m4s")
    assert ref == PartRef("s", "b1", "720p", 12, 3) and ref.directory == "hls/s/b1/720p"
    for key in ("hls/s/b1/720p/000012.m4s", "hls/s/720p.m3u8", "hls/s/b1/720p/12.3.m4s",
                "x/s/b1/720p/000012.3.m4s", "hls/s//720p/000012.3.m4s", "hls/s/b1/720p/000012.3.mp4"):  # fmt: skip
        assert parse_part_key(key) is None, key


def test_the_hinted_part_and_the_next_one_wait_others_are_gone() -> None:
    st = state(5, 2)  # hint: segment 5 part 2
    assert hinted_part(st, KEY) == PartRef("s", "b1", "720p", 5, 2)
    for seq, idx in [(5, 2), (5, 3), (6, 0)]:
        assert part_wait_verdict(st, KEY, PartRef("s", "b1", "720p", seq, idx)) is PartVerdict.WAIT
    for ref in [PartRef("s", "b1", "720p", 5, 4), PartRef("s", "b1", "720p", 9, 0),
                PartRef("s", "b1", "720p", 4, 2),  # its segment is listed complete
                PartRef("s", "b0", "720p", 5, 2), PartRef("s", "b1", "480p", 5, 2)]:  # fmt: skip
        assert part_wait_verdict(st, KEY, ref) is PartVerdict.GONE, ref
    wanted = PartRef("s", "b1", "720p", 3, 0)
    assert part_wait_verdict(None, KEY, wanted) is PartVerdict.GONE
    assert part_wait_verdict(state(3, ended=True), KEY, wanted) is PartVerdict.GONE
    assert part_wait_verdict(state(3, 0, hint=False), KEY, wanted) is PartVerdict.GONE
    assert hinted_part(PlaylistState(hint="/abs/000001.0.m4s"), KEY) is None
    assert hinted_part(PlaylistState(hint="http://x/000001.0.m4s"), KEY) is None
    assert hinted_part(PlaylistState(hint="../../etc/000001.0.m4s"), KEY) is None
