"""The packager core with low latency on: parts in, LL-HLS playlists out (sans-I/O)."""

from __future__ import annotations

from dataclasses import replace

import m3u8
import pytest
from tests.packager.ll import check_ll, complete, hint, in_progress

from tidecast.messages import (
    BroadcastEnded,
    BroadcastFinished,
    BroadcastStarted,
    PartReady,
    SegmentReady,
)
from tidecast.packager.core import Action, BadSegment, PackagerCore, PutPlaylist, Record
from tidecast.packager.hls import parse_media_playlist

B = "20261202T000000Z-aaaaaa"
T0 = 1_700_000_000.0
RENDITIONS = ("720p", "360p", "audio")
PART = 1 / 3
PARTS = 6


def seg(n: int, rendition: str = "720p", *, gap: bool = False, b: str = B, duration: float = 2.0) -> SegmentReady:
    return SegmentReady(
        stream="s", broadcast=b, rendition=rendition, sequence=n, start=10.0 + 2 * n, duration=duration,
        init_key="" if gap else f"hls/s/{b}/{rendition}/init-abc.mp4",
        segment_key=f"hls/s/{b}/{rendition}/{n:06d}.m4s", size=0 if gap else 250_000,
        codecs="mp4a.40.2" if rendition == "audio" else "avc1.64001f", width=0 if rendition == "audio" else 1280,
        height=0 if rendition == "audio" else 720, frame_rate=30.0, first_frame_arrival=T0 + 2 * n,
        renditions=RENDITIONS, gap=gap,
    )  # fmt: skip


def prt(n: int, i: int, rendition: str = "720p", *, b: str = B, duration: float = PART,
        final: bool | None = None, key: str = "") -> PartReady:  # fmt: skip
    return PartReady(
        stream="s", broadcast=b, rendition=rendition, sequence=n, index=i, start=10.0 + 2 * n + i * PART,
        duration=duration, key=key or f"hls/s/{b}/{rendition}/{n:06d}.{i}.m4s",
        init_key=f"hls/s/{b}/{rendition}/init-abc.mp4", size=40_000, independent=i == 0,
        final=i == PARTS - 1 if final is None else final, produced_at=T0 + 2 * n + (i + 1) * PART + 0.05,
    )  # fmt: skip


def core(**kw: object) -> PackagerCore:
    args: dict[str, object] = dict(window=100, target_duration=2.0, include_source=False, gap_after=6.0,
                                   end_gap_after=15.0, ll_hls=True, part_target=PART)  # fmt: skip
    args.update(kw)
    return PackagerCore(**args)  # type: ignore[arg-type]


def started(c: PackagerCore) -> None:
    assert c.handle(BroadcastStarted("s", B, T0), 0.0) == []


def puts(actions: list[Action], rendition: str = "720p") -> list[PutPlaylist]:
    return [a for a in actions if isinstance(a, PutPlaylist) and a.rendition == rendition]


def last(actions: list[Action], rendition: str = "720p", live: bool = True) -> m3u8.M3U8:
    texts = puts(actions, rendition)
    assert texts, f"no playlist of {rendition} written"
    return check_ll(texts[-1].text, live=live)


def uri(n: int, i: int, rendition: str = "720p") -> str:
    return f"{B}/{rendition}/{n:06d}.{i}.m4s"


def seqs(pl: m3u8.M3U8) -> list[int]:
    return [int(s.uri.rsplit("/", 1)[1].split(".")[0]) for s in complete(pl)]


def parts_of(pl: m3u8.M3U8) -> dict[int, list[str]]:
    """Segment number -> the URIs of its listed parts (the one in progress too)."""
    out: dict[int, list[str]] = {}
    for s in pl.segments:
        for p in s.parts:
            out.setdefault(int(p.uri.rsplit("/", 1)[1].split(".")[0]), []).append(p.uri)
    return out


def make(c: PackagerCore, n: int, now: float, renditions: tuple[str, ...] = ("720p",)) -> list[Action]:
    """Segment ``n`` of each rendition, part by part, then its SegmentReady."""
    out: list[Action] = []
    for i in range(PARTS):
        for r in renditions:
            out += c.handle(prt(n, i, r), now + i * PART)
    for r in renditions:
        out += c.handle(seg(n, r), now + 2.0)
    return out


def test_parts_are_listed_at_once_and_stay_with_their_segment() -> None:
    c = core()
    started(c)
    for n in range(5):
        for i in range(PARTS):
            for r in RENDITIONS:
                out = c.handle(prt(n, i, r), 2.0 * n + i * PART)
                assert len(puts(out, r)) == 1 and not any(isinstance(a, Record) for a in out)
                assert {a.rendition for a in out if isinstance(a, PutPlaylist)} == {r}  # only its own
                pl = last(out, r)
                assert [p.uri for p in in_progress(pl)] == [uri(n, k, r) for k in range(i + 1)]
                assert hint(pl) == (uri(n, i + 1, r) if i + 1 < PARTS else uri(n + 1, 0, r))
                assert puts(out, r)[0].last_part == i and pl.media_sequence == 0
        for r in RENDITIONS:
            out = c.handle(seg(n, r), 2.0 * n + 2.0)
            assert {a.rendition for a in out if isinstance(a, PutPlaylist)} == {r}
            kinds = [type(a).__name__ for a in out]
            assert kinds.index("Record") < kinds.index("PutPlaylist")  # recorded before listed
            pl = last(out, r)
            assert seqs(pl) == list(range(n + 1)) and in_progress(pl) == []
            assert parts_of(pl) == {k: [uri(k, i, r) for i in range(PARTS)] for k in range(max(0, n - 2), n + 1)}
            assert hint(pl) == uri(n + 1, 0, r) and puts(out, r)[0].last_part == -1
    texts = {r: next(a.text for a in c.render_all("s") if isinstance(a, PutPlaylist) and a.rendition == r)
             for r in RENDITIONS}  # fmt: skip
    # every media playlist of the stream: the same server control and part target (6.2.4)
    headers = {r: [ln for ln in t.splitlines() if ln.startswith(("#EXT-X-SERVER-CONTROL", "#EXT-X-PART-INF"))]
               for r, t in texts.items()}  # fmt: skip
    assert headers["720p"] == ["#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.002,CAN-SKIP-UNTIL=12.0",
                               "#EXT-X-PART-INF:PART-TARGET=0.334"]  # fmt: skip
    assert headers["360p"] == headers["audio"] == headers["720p"]
    reports = {r.uri: (r.last_msn, r.last_part) for r in m3u8.loads(texts["720p"]).rendition_reports}
    assert reports == {"360p.m3u8": (4, PARTS - 1), "audio.m3u8": (4, PARTS - 1)}  # the others, up to date
    assert c.stats.parts_listed == 5 * PARTS * 3 and c.stats.segments_whole == 0


def test_a_part_out_of_order_waits_for_the_missing_one() -> None:
    c = core()
    started(c)
    c.handle(prt(0, 0), 0.0)
    assert c.handle(prt(0, 2), 0.7) == []  # 1 is missing: nothing changes
    out = c.handle(prt(0, 1), 0.8)
    assert len(puts(out)) == 1  # both in one write
    assert [p.uri for p in in_progress(last(out))] == [uri(0, 0), uri(0, 1), uri(0, 2)]
    assert hint(last(out)) == uri(0, 3)


def test_duplicates_change_nothing() -> None:
    c = core()
    started(c)
    c.handle(prt(0, 0), 0.0)
    assert c.handle(prt(0, 0), 0.1) == []  # listed already
    c.handle(prt(0, 2), 0.2)
    assert c.handle(prt(0, 2), 0.3) == []  # waiting already
    assert c.stats.parts_duplicate == 2
    out = c.handle(prt(0, 1), 0.4)
    assert [p.uri for p in in_progress(last(out))] == [uri(0, 0), uri(0, 1), uri(0, 2)]


def test_a_segment_ready_first_lists_it_whole_and_its_parts_are_ignored() -> None:
    c = core()
    started(c)
    make(c, 0, 0.0)
    out = c.handle(seg(1), 3.0)  # its parts never came (or come later)
    pl = last(out)
    assert seqs(pl) == [0, 1] and set(parts_of(pl)) == {0}
    late = [c.handle(prt(1, i), 3.1) for i in range(PARTS)]
    assert late == [[]] * PARTS and c.stats.parts_late == PARTS
    assert c.stats.segments_whole == 1
    out = make(c, 2, 4.0)  # the next one is listed in parts again
    assert set(parts_of(last(out))) == {0, 2}


@pytest.mark.parametrize(
    ("arrive", "duration", "why"),
    [
        ((0, 1, 2), 2.0, "the last parts never came"),
        ((0, 1, 3, 4, 5), 2.0, "a part in the middle never came"),
        ((0, 1, 2, 3, 4, 5), 2.5, "the parts do not add up to the segment"),
    ],
)
def test_a_segment_whose_parts_do_not_make_it_whole_is_listed_without_them(
    arrive: tuple[int, ...], duration: float, why: str
) -> None:
    c = core()
    started(c)
    make(c, 0, 0.0)
    before = {}
    for i in arrive:
        out = c.handle(prt(1, i), 2.0 + i * PART)
        if puts(out):
            before = parts_of(last(out))
    missing = min(set(range(PARTS)) - set(arrive), default=PARTS)
    assert before[1] == [uri(1, i) for i in range(missing)]  # listed up to the first missing one
    out = c.handle(seg(1, duration=duration), 4.0)
    pl = last(out)
    assert seqs(pl) == [0, 1] and 1 not in parts_of(pl), why
    assert complete(pl)[1].duration == duration
    assert c.stats.segments_whole == 1 and c.next_deadline() is None  # nothing left waiting
    out = make(c, 2, 4.0)
    assert set(parts_of(last(out))) == {0, 2}


def test_a_gap_segment_has_no_parts() -> None:
    c = core()
    started(c)
    make(c, 0, 0.0)
    for i in range(3):
        c.handle(prt(1, i), 2.0 + i * PART)
    out = c.handle(seg(1, gap=True), 3.0)  # the transcoder gave up on it
    pl = last(out)
    assert "#EXT-X-GAP" in complete(pl)[1].dumps(None) and 1 not in parts_of(pl)
    assert hint(pl) == uri(2, 0)


def test_a_missing_segment_with_later_parts_here_becomes_a_gap_at_its_deadline() -> None:
    c = core()
    started(c)
    make(c, 0, 0.0)
    # segment 1 and all its messages are lost; segment 2's parts come
    assert c.handle(prt(2, 0), 5.0) == [] and c.handle(prt(2, 1), 5.3) == []
    assert c.next_deadline() == 11.0
    out = c.tick(11.0)
    pl = last(out)
    assert seqs(pl) == [0, 1] and "#EXT-X-GAP" in complete(pl)[1].dumps(None)
    assert [p.uri for p in in_progress(pl)] == [uri(2, 0), uri(2, 1)]  # listed as soon as they can be


def test_a_missing_part_becomes_a_gap_part_at_its_deadline() -> None:
    c = core()
    started(c)
    make(c, 0, 0.0)
    c.handle(prt(1, 0), 2.0)
    c.handle(prt(1, 1), 2.3)
    c.handle(prt(1, 3), 3.0)  # 2 is lost, and the segment is late
    assert c.next_deadline() == 9.0
    assert c.tick(8.9) == []
    out = c.tick(9.0)
    parts = in_progress(last(out))
    assert [(p.uri, p.gap) for p in parts] == [(uri(1, 0), None), (uri(1, 1), None), (uri(1, 2), "YES"),
                                               (uri(1, 3), None)]  # fmt: skip
    assert parts[2].duration == pytest.approx(PART, abs=1e-5) and c.stats.parts_gaps == 1
    assert c.next_deadline() is None
    out = c.handle(prt(1, 4), 9.1) + c.handle(prt(1, 5), 9.2) + c.handle(seg(1), 9.3)
    pl = last(out)  # the segment keeps the parts listed for it, the gap one included
    assert parts_of(pl)[1] == [uri(1, i) for i in range(PARTS)]


def test_takeover_replay_with_parts_gives_the_same_playlists() -> None:
    first = "20261201T000000Z-bbbbbb"
    old = core()
    old.handle(BroadcastStarted("s", first, T0 - 100), 0.0)
    for n in range(3):
        for i in range(PARTS):
            old.handle(prt(n, i, b=first), 0.0)
        old.handle(seg(n, b=first), 0.0)
    old.handle(BroadcastEnded("s", first, T0 - 90, "unpublished", 3), 0.0)
    old.handle(BroadcastFinished("s", first, T0 - 90, "unpublished"), 0.0)
    msgs: list[object] = [BroadcastStarted("s", B, T0)]
    for n in range(2):
        msgs += [prt(n, i) for i in range(PARTS)] + [seg(n)]
    msgs += [prt(2, 0), prt(2, 2), prt(2, 1)]  # the segment in progress
    for m in msgs:
        old.handle(m, 1.0)  # type: ignore[arg-type]
    want = next(a for a in old.render_all("s") if isinstance(a, PutPlaylist) and a.rendition == "720p")
    assert len(in_progress(check_ll(want.text))) == 3

    stored = parse_media_playlist(want.text, 100, 2.0)
    new = core()
    base = new.seed_rendition("s", "720p", stored, B)
    assert base == 3
    new.stream("s").next_msn = base
    for m in msgs:
        new.handle(m, 1.0)  # type: ignore[arg-type]
    got = next(a for a in new.render_all("s") if isinstance(a, PutPlaylist) and a.rendition == "720p")
    assert got.text == want.text


def test_a_new_broadcast_drops_the_unfinished_segment_of_the_last_one() -> None:
    c = core()
    started(c)
    make(c, 0, 0.0)
    c.handle(prt(1, 0), 2.0)  # the publisher's process died mid-segment
    nb = "20261202T010000Z-cccccc"
    c.handle(BroadcastStarted("s", nb, T0 + 100), 50.0)
    out = c.handle(prt(0, 0, b=nb), 50.5)
    pl = last(out)
    assert uri(1, 0) not in str(parts_of(pl)) and in_progress(pl)[0].uri == f"{nb}/720p/000000.0.m4s"
    assert "#EXT-X-DISCONTINUITY\n#EXT-X-MAP" in puts(out)[-1].text.split("000000.m4s", 1)[1]
    out = c.handle(seg(0, b=nb), 52.0)
    assert seqs(last(out)) == [0, 0] and m3u8.loads(puts(out)[-1].text).media_sequence == 0


def test_a_part_longer_than_the_part_target_allows_is_not_listed() -> None:
    c = core()
    started(c)
    make(c, 0, 0.0)
    c.handle(prt(1, 0), 2.0)
    assert c.handle(prt(1, 1, duration=0.9), 2.9) == []  # a stall upstream: its segment is listed whole
    assert c.handle(prt(1, 2), 3.0) == []
    out = c.handle(seg(1), 4.0)
    assert 1 not in parts_of(last(out)) and c.stats.segments_whole == 1
    assert m3u8.loads(puts(out)[-1].text).part_inf.part_target == 0.334


def test_a_part_a_frame_longer_raises_the_part_target_of_every_playlist() -> None:
    c = core()
    started(c)
    out = make(c, 0, 0.0, RENDITIONS)
    out = c.handle(prt(1, 0, "audio", duration=0.3413), 2.1)  # AAC frames do not divide a third
    assert {a.rendition for a in puts(out, "audio") + puts(out, "720p") + puts(out, "360p")} == set(RENDITIONS)
    for r in RENDITIONS:
        assert m3u8.loads(puts(out, r)[-1].text).part_inf.part_target == 0.342
        check_ll(puts(out, r)[-1].text)


def test_the_hint_stops_after_the_last_segment_and_endlist_has_none() -> None:
    c = core()
    started(c)
    make(c, 0, 0.0)
    c.handle(BroadcastEnded("s", B, T0 + 2, "unpublished", 2), 2.5)
    for i in range(PARTS):
        out = c.handle(prt(1, i), 2.6)
    assert hint(last(out)) is None  # part 5 was the final part of the final segment
    out = c.handle(seg(1), 3.0)
    assert hint(last(out)) is None
    out = c.handle(BroadcastFinished("s", B, T0 + 3, "unpublished"), 3.1)
    out += c.tick(2.5 + 15.0)  # the other renditions never come
    pl = last(out, live=False)
    assert pl.is_endlist and seqs(pl) == [0, 1]


def test_without_ll_parts_change_nothing() -> None:
    plain = core(ll_hls=False)
    ref = core(ll_hls=False)
    started(plain)
    started(ref)
    texts, want = [], []
    for n in range(4):
        for i in range(PARTS):
            assert plain.handle(prt(n, i), n) == []
        texts += [a.text for a in puts(plain.handle(seg(n), n))]
        want += [a.text for a in puts(ref.handle(seg(n), n))]
    assert texts == want and all("#EXT-X-VERSION:8\n" in t for t in texts)
    assert not any(tag in t for t in texts for tag in ("PART", "SERVER-CONTROL", "PRELOAD", "RENDITION-REPORT"))


def test_parts_that_name_other_objects_are_refused() -> None:
    c = core()
    started(c)
    with pytest.raises(BadSegment, match="part key"):
        c.handle(prt(0, 0, key=f"hls/s/{B}/720p/000000.m4s"), 0.0)
    with pytest.raises(BadSegment, match="part key"):
        c.handle(prt(0, 1, key=f"hls/other/{B}/720p/000000.1.m4s"), 0.0)
    with pytest.raises(BadSegment, match="duration"):
        c.handle(prt(0, 0, duration=0.0), 0.0)
    with pytest.raises(ValueError, match="part target"):
        core(part_target=1.5)


def test_parts_of_a_source_that_stands_in_for_a_rung_are_listed() -> None:
    """Passthrough with LL-HLS: a source part says it is listed; one that does not is not."""
    c = core()
    started(c)
    out = c.handle(replace(prt(0, 0, "source"), listed=True), 0.4)
    assert [p.uri for p in in_progress(last(out, "source"))] == [uri(0, 0, "source")]
    c2 = core()
    started(c2)
    assert puts(c2.handle(prt(0, 0, "source"), 0.4), "source") == []
