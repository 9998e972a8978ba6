"""The packager core, sans-I/O: messages and the time in, actions out."""

from __future__ import annotations

from dataclasses import replace

import m3u8

from tidecast.messages import BroadcastEnded, BroadcastFinished, BroadcastStarted, SegmentReady
from tidecast.packager.core import (
    Action,
    FinishRecording,
    Listed,
    PackagerCore,
    PutMaster,
    PutPlaylist,
    Record,
    RewriteVod,
)
from tidecast.packager.hls import parse_media_playlist

B = "20261202T000000Z-aaaaaa"
T0 = 1_700_000_000.0
RENDITIONS = ("720p", "360p", "audio")


def seg(n: int, rendition: str = "720p", *, gap: bool = False, heal: bool = False, b: str = B) -> SegmentReady:
    return SegmentReady(
        stream="s", broadcast=b, rendition=rendition, sequence=n, start=10.0 + 2 * n, duration=2.0,
        init_key="" if gap else f"hls/s/{b}/{rendition}/init-abc.mp4",
        segment_key=f"hls/s/{b}/{rendition}/{n:06d}.m4s", size=0 if gap else 250_000,
        codecs="mp4a.40.2" if rendition == "audio" else "avc1.64001f", width=0 if rendition == "audio" else 1280,
        height=0 if rendition == "audio" else 720, frame_rate=30.0, first_frame_arrival=T0 + 2 * n,
        renditions=RENDITIONS, gap=gap, heal=heal,
    )  # fmt: skip


def playlists(actions: list[Action], rendition: str = "720p") -> list[m3u8.M3U8]:
    return [m3u8.loads(a.text) for a in actions if isinstance(a, PutPlaylist) and a.rendition == rendition]


def last(actions: list[Action], rendition: str = "720p") -> m3u8.M3U8:
    pls = playlists(actions, rendition)
    assert pls, f"no playlist of {rendition} written"
    return pls[-1]


def seqs(pl: m3u8.M3U8) -> list[int]:
    return [int(s.uri.rsplit("/", 1)[1].split(".")[0]) for s in pl.segments]


def gaps(pl: m3u8.M3U8) -> list[int]:
    return [n for n, s in zip(seqs(pl), pl.segments, strict=True) if "#EXT-X-GAP" in s.dumps(None)]


def core() -> PackagerCore:
    return PackagerCore(window=100, target_duration=2.0, include_source=False, gap_after=6.0,
                        end_gap_after=15.0)  # fmt: skip


def started(c: PackagerCore) -> None:
    assert c.handle(BroadcastStarted("s", B, T0), 0.0) == []


def test_out_of_order_segments_wait_for_their_predecessors() -> None:
    c = core()
    started(c)
    out = c.handle(seg(0), 1.0)
    assert seqs(last(out)) == [0]
    out = c.handle(seg(2), 1.5)
    assert out == []  # 1 is missing: nothing is listed, nothing recorded
    out = c.handle(seg(1), 2.0)
    records = [a.seg.sequence for a in out if isinstance(a, Record)]
    assert records == [1, 2]
    assert seqs(last(out)) == [0, 1, 2]
    # each is recorded before the playlist that first names it is written
    kinds = [type(a).__name__ for a in out]
    assert kinds.index("Record") < kinds.index("PutPlaylist")
    assert [a.seg.sequence for a in out if isinstance(a, Listed)] == [1, 2]


def test_a_missing_segment_becomes_a_gap_at_its_deadline_and_heals_when_it_arrives() -> None:
    c = core()
    started(c)
    c.handle(seg(0), 0.0)
    c.handle(seg(2), 1.0)
    c.handle(seg(3), 3.0)
    assert c.next_deadline() == 7.0  # 6 s after the first later segment arrived
    assert c.tick(6.9) == []
    out = c.tick(7.0)
    pl = last(out)
    assert seqs(pl) == [0, 1, 2, 3] and gaps(pl) == [1]
    rec = [a for a in out if isinstance(a, Record)]
    assert [(a.seg.sequence, a.seg.gap) for a in rec] == [(1, True), (2, False), (3, False)]
    assert rec[0].seg.duration == 2.0 and rec[0].seg.segment_key.endswith("/720p/000001.m4s")
    assert c.next_deadline() is None and c.stats.gaps_listed == 1
    # the real segment 1 turns up late: the recording and the live window heal
    out = c.handle(seg(1), 20.0)
    assert [(type(a).__name__, getattr(a, "heal", None)) for a in out if isinstance(a, Record)] == [("Record", True)]
    pl = last(out)
    assert seqs(pl) == [0, 1, 2, 3] and gaps(pl) == []
    assert pl.media_sequence == 0  # nothing moved: the entry was replaced in place
    assert c.stats.late == 1
    assert c.handle(seg(1), 21.0) == []  # a repeat changes nothing


def test_a_skipped_rung_heals_from_a_heal_job_and_rewrites_a_written_vod() -> None:
    c = core()
    started(c)
    for r in RENDITIONS:
        c.handle(seg(0, r), 0.0)
    c.handle(seg(1, "720p", gap=True), 1.0)  # skipped under backpressure
    c.handle(seg(1, "360p"), 1.0)
    c.handle(seg(1, "audio"), 1.0)
    assert gaps(m3u8.loads(parse_media_playlist(next(
        a.text for a in c.render_all("s") if isinstance(a, PutPlaylist) and a.rendition == "720p"), 100, 2).render())) == [1]  # fmt: skip
    c.handle(BroadcastEnded("s", B, T0 + 4, "unpublished", 2), 2.0)
    out = c.handle(BroadcastFinished("s", B, T0 + 5, "unpublished"), 3.0)
    assert FinishRecording("s", B) in out
    assert last(out).is_endlist and gaps(last(out)) == [1]
    out = c.handle(seg(1, "720p", heal=True), 30.0)
    assert any(isinstance(a, Record) and a.heal for a in out)
    assert RewriteVod("s", B) in out  # the VOD was written with the gap: write it again
    pl = last(out)
    assert pl.is_endlist and gaps(pl) == [] and seqs(pl) == [0, 1]
    assert c.stats.healed == 1


def test_the_broadcast_ends_with_endlist_and_its_recording_even_with_segments_missing() -> None:
    c = core()
    started(c)
    for r in RENDITIONS:
        c.handle(seg(0, r), 0.0)
    c.handle(seg(1, "audio"), 1.0)
    c.handle(seg(1, "360p"), 1.0)
    # 720p never brings segment 1, and segment 2 (the last) never comes for any video rung
    c.handle(seg(2, "audio"), 2.0)
    c.handle(BroadcastEnded("s", B, T0 + 6, "unpublished", 3), 3.0)
    out = c.handle(BroadcastFinished("s", B, T0 + 7, "unpublished"), 4.0)
    assert not any(isinstance(a, FinishRecording) for a in out)  # renditions still being made
    assert c.next_deadline() == 18.0  # end_gap_after from the end of the publish
    out = c.tick(18.0)
    assert FinishRecording("s", B) in out
    assert out.index(FinishRecording("s", B)) > max(i for i, a in enumerate(out) if isinstance(a, Record))
    for r, want in (("720p", [1, 2]), ("360p", [2]), ("audio", [])):
        pl = last(out, r) if playlists(out, r) else None
        if pl is None:
            assert want == [], r
            continue
        assert pl.is_endlist and seqs(pl) == [0, 1, 2] and gaps(pl) == want, r


def test_a_rendition_that_never_made_a_segment_does_not_block_the_end() -> None:
    c = core()
    started(c)
    c.handle(seg(0, "audio"), 0.0)
    c.handle(seg(0, "360p"), 0.0)
    c.handle(BroadcastEnded("s", B, T0 + 2, "unpublished", 1), 1.0)
    c.handle(BroadcastFinished("s", B, T0 + 3, "unpublished"), 1.0)
    out = c.tick(16.0)
    assert FinishRecording("s", B) in out
    # 720p had no init segment ever: its gap is recorded (the VOD lists it) but not listed live
    assert any(isinstance(a, Record) and a.seg.rendition == "720p" and a.seg.gap for a in out)


def test_pending_is_bounded() -> None:
    c = PackagerCore(window=100, target_duration=2.0, include_source=False, max_pending=3)
    started(c)
    c.handle(seg(0), 0.0)
    out: list[Action] = []
    for n in range(2, 7):  # 1 never comes
        out += c.handle(seg(n), 1.0)
    assert c.stats.overflow == 1
    assert gaps(last(out)) == [1] and seqs(last(out)) == list(range(7))


def test_master_lists_every_rendition_at_once() -> None:
    c = core()
    started(c)
    out = c.handle(seg(0, "audio"), 0.0) + c.handle(seg(0, "720p"), 0.0)
    assert not any(isinstance(a, PutMaster) for a in out)  # 360p not there yet
    out = c.handle(seg(0, "360p"), 0.0)
    master = next(a for a in out if isinstance(a, PutMaster))
    parsed = m3u8.loads(master.text)
    assert sorted(p.uri for p in parsed.playlists) == ["360p.m3u8", "720p.m3u8"]
    assert all(p.stream_info.audio == "audio" for p in parsed.playlists)


def test_takeover_replay_gives_the_same_playlists() -> None:
    """A new leader replays the broadcast's messages into a fresh core, seeded with
    the stored playlists' earlier broadcasts: the result is what the old leader had."""
    first = "20261201T000000Z-bbbbbb"
    old = core()
    old.handle(BroadcastStarted("s", first, T0 - 100), 0.0)
    for n in range(3):
        old.handle(seg(n, "720p", b=first), 0.0)
    old.handle(BroadcastEnded("s", first, T0 - 90, "unpublished", 3), 0.0)
    old.handle(BroadcastFinished("s", first, T0 - 90, "unpublished"), 0.0)
    msgs = [BroadcastStarted("s", B, T0), seg(0), seg(2), seg(1), seg(3, gap=True), seg(3, heal=True)]
    for m in msgs:
        old.handle(m, 1.0)
    want = next(a for a in old.render_all("s") if isinstance(a, PutPlaylist) and a.rendition == "720p")

    stored = parse_media_playlist(want.text, 100, 2.0)
    new = core()
    base = new.seed_rendition("s", "720p", stored, B)
    assert base == 3  # the broadcast's first msn, read back from the stored copy
    new.stream("s").next_msn = base
    for m in msgs:
        new.handle(m, 1.0)
    got = next(a for a in new.render_all("s") if isinstance(a, PutPlaylist) and a.rendition == "720p")
    assert got.text == want.text
    assert gaps(m3u8.loads(got.text)) == []


def test_a_heal_for_an_older_broadcast_updates_only_its_recording() -> None:
    c = core()
    c.handle(BroadcastStarted("s", B, T0), 0.0)
    older = "20261101T000000Z-cccccc"
    out = c.handle(seg(4, "720p", heal=True, b=older), 1.0)
    assert [type(a) for a in out] == [Record, RewriteVod]
    assert c.stream("s").current == B


def test_a_source_that_stands_in_for_a_rung_is_listed_and_recorded_with_the_ladder() -> None:
    """Passthrough: the segmenter names the source among the renditions of its segments;
    the packager lists and records it (with its own audio muxed in) beside the ladder,
    and the master waits for it like any rendition."""
    c = core()
    started(c)
    made = ("source", "360p", "audio")

    def s(n: int, rendition: str) -> SegmentReady:
        m = replace(seg(n, rendition), renditions=made)
        return replace(m, codecs="avc1.64001f,mp4a.40.2") if rendition == "source" else m

    out = c.handle(s(0, "360p"), 0.1) + c.handle(s(0, "audio"), 0.1)
    assert not any(isinstance(a, PutMaster) for a in out)  # the source is not in yet
    out = c.handle(s(0, "source"), 0.2)
    assert seqs(last(out, "source")) == [0]
    assert [a.seg.rendition for a in out if isinstance(a, Record)] == ["source"]
    master = m3u8.loads(next(a.text for a in out if isinstance(a, PutMaster)))
    assert sorted(p.uri for p in master.playlists) == ["360p.m3u8", "source.m3u8"]
    src = next(p for p in master.playlists if p.uri == "source.m3u8")
    assert src.stream_info.codecs == "avc1.64001f,mp4a.40.2"  # its own audio, no second one
    # a source segment that names no listed source (no passthrough) is not listed
    out = c.handle(seg(1, "source"), 1.0)
    assert not playlists(out, "source")
