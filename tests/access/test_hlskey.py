"""HLS AES-128: keys, whole-segment CBC, and the EXT-X-KEY tags added to served playlists
(read back with the m3u8 package, an independent parser)."""

from __future__ import annotations

import m3u8
import pytest

from tidecast import keys
from tidecast.access import hlskey
from tidecast.packager.hls import MediaPlaylist, PlaylistPart, PlaylistSegment

SEED = "00112233445566778899aabbccddeeff"


def live(
    first: int, count: int, broadcast: str = "b1", init_change_at: int = -1, parts: bool = False
) -> str:
    pl = MediaPlaylist(
        window=1000, target_duration=2, low_latency=parts, part_target=0.5 if parts else None
    )
    for n in range(first, first + count):
        init = "init-b.mp4" if 0 <= init_change_at <= n else "init-a.mp4"
        seg_parts = (
            (PlaylistPart(0, f"{broadcast}/720p/{n:06d}.0.m4s", 0.5, True),) if parts else ()
        )
        pl.append(PlaylistSegment(n, keys.relative(keys.segment("s", broadcast, "720p", n), "hls/s"), 2.0,
                                  keys.relative(f"hls/s/{broadcast}/720p/{init}", "hls/s"),
                                  discontinuity=n == init_change_at, parts=seg_parts))  # fmt: skip
    return pl.render()


def test_keys_iv_and_cbc_round_trip() -> None:
    k0, k1 = hlskey.key_for(SEED, 0), hlskey.key_for(SEED, 1)
    assert len(k0) == 16 and k0 != k1 and hlskey.key_for(SEED, 0) == k0
    assert hlskey.key_for("ff" * 16, 0) != k0
    assert hlskey.iv_for(5) == b"\0" * 15 + b"\x05"
    assert hlskey.segment_key(SEED, 19, 10) == k1 and hlskey.segment_key(SEED, 9, 10) == k0
    for size in (0, 1, 15, 16, 17, 100_000):
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        enc = hlskey.encrypt(data, k0, hlskey.iv_for(7))
        assert len(enc) % 16 == 0 and len(enc) > len(data) and enc[:16] != data[:16]
        assert hlskey.decrypt(enc, k0, hlskey.iv_for(7)) == data


def test_key_uri_keys() -> None:
    k = keys.aes_key("s", "b1", 3)
    assert k == "hls/s/b1/keys/000003.key"
    p = keys.parse(k)
    assert p is not None and (p.kind, p.stream, p.broadcast, p.sequence) == (
        "aes_key",
        "s",
        "b1",
        3,
    )
    other = keys.parse("hls/s/b1/keys/x.key")
    assert other is not None and other.kind == "other"


def test_clear_playlists_come_back_unchanged() -> None:
    text = live(0, 5)
    assert hlskey.add_key_tags(text, "hls/s/720p.m3u8", {"b1": ""}, 10) == text
    assert hlskey.add_key_tags(text, "hls/s/720p.m3u8", {}, 10) == text


def test_live_playlist_keys_rotate_every_n_segments() -> None:
    text = hlskey.add_key_tags(live(8, 7), "hls/s/720p.m3u8", {"b1": SEED}, 5)
    pl = m3u8.loads(text)
    got = [(s.uri, s.key.uri if s.key else None, s.key.iv if s.key else None) for s in pl.segments]
    assert [g[1] for g in got] == ["b1/keys/000001.key"] * 2 + ["b1/keys/000002.key"] * 5
    assert all(g[2] is None for g in got)  # the IV is the media sequence number
    assert text.count("#EXT-X-KEY:") == 2
    # the init segment stays in the clear: the map comes before the first key
    assert text.index("#EXT-X-MAP:") < text.index("#EXT-X-KEY:")


def test_a_new_init_segment_after_a_key_is_in_the_clear() -> None:
    text = hlskey.add_key_tags(live(0, 4, init_change_at=2), "hls/s/720p.m3u8", {"b1": SEED}, 10)
    lines = text.splitlines()
    second_map = [i for i, ln in enumerate(lines) if ln.startswith("#EXT-X-MAP:")][1]
    assert lines[second_map - 1] == "#EXT-X-KEY:METHOD=NONE"
    assert lines[second_map + 1].startswith("#EXT-X-KEY:METHOD=AES-128") or any(
        ln.startswith("#EXT-X-KEY:METHOD=AES-128") for ln in lines[second_map : second_map + 4]
    )
    pl = m3u8.loads(text)
    assert all(s.key is not None and s.key.method == "AES-128" for s in pl.segments)


def test_vod_and_clip_playlists() -> None:
    vod = "#EXTM3U\n#EXT-X-VERSION:8\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n" \
          '#EXT-X-MAP:URI="720p/init-a.mp4"\n' + "".join(f"#EXTINF:2.0,\n720p/{n:06d}.m4s\n" for n in range(3)) \
          + "#EXT-X-ENDLIST\n"  # fmt: skip
    text = hlskey.add_key_tags(vod, "hls/s/b1/720p.m3u8", {"b1": SEED}, 2)
    pl = m3u8.loads(text)
    assert [s.key.uri for s in pl.segments] == [
        "keys/000000.key",
        "keys/000000.key",
        "keys/000001.key",
    ]
    assert text.rstrip().endswith("#EXT-X-ENDLIST")
    # a clip's playlist numbers from 0 but lists segments 30..: the IV must be written
    clip = vod.replace("720p/0000", "../../720p/0000").replace("000000.m4s", "000030.m4s") \
              .replace("000001.m4s", "000031.m4s").replace("000002.m4s", "000032.m4s")  # fmt: skip
    text = hlskey.add_key_tags(clip, "hls/s/b1/clips/c1/720p.m3u8", {"b1": SEED}, 10)
    pl = m3u8.loads(text)
    assert [s.key.iv for s in pl.segments] == [f"0x{n:032x}" for n in (30, 31, 32)]
    assert {s.key.uri for s in pl.segments} == {"../../keys/000003.key"}


def test_parts_leave_an_encrypted_playlist() -> None:
    text = live(0, 4, parts=True)
    assert "#EXT-X-PART:" in text and "PART-HOLD-BACK" in text
    out = hlskey.add_key_tags(text, "hls/s/720p.m3u8", {"b1": SEED}, 10)
    for gone in ("#EXT-X-PART:", "#EXT-X-PART-INF", "#EXT-X-PRELOAD-HINT", "PART-HOLD-BACK"):
        assert gone not in out
    assert "CAN-BLOCK-RELOAD=YES" in out and len(m3u8.loads(out).segments) == 4


@pytest.mark.parametrize("rotation", [1, 3, 1000])
def test_referenced_broadcasts(rotation: int) -> None:
    text = live(0, 3) + live(3, 2, broadcast="b2")
    assert hlskey.referenced(text, "hls/s/720p.m3u8") == {"b1": "s", "b2": "s"}
    out = hlskey.add_key_tags(text, "hls/s/720p.m3u8", {"b1": SEED, "b2": ""}, rotation)
    assert "#EXT-X-KEY:METHOD=NONE" in out  # b2's segments are in the clear
