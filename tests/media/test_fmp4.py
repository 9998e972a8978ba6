"""Tests for tidecast.media.fmp4: the fMP4 writer, checked by decoding with PyAV, and the reader.

The round-trip tests encode a short H.264 (with B-frames) + AAC clip with the bundled
ffmpeg, demux it with PyAV, re-mux it with our writer and decode the result again.
The rewrite tests also run on fragmented MP4 written by ffmpeg itself (``-f mp4`` with
``frag_keyframe+empty_moov`` in both the default-base-is-moof and explicit
base-data-offset flavours, and ``-f hls -hls_segment_type fmp4`` segments with ``sidx``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import imageio_ffmpeg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidecast.media.aac import parse_asc
from tidecast.media.errors import MediaError
from tidecast.media.fmp4 import (
    NON_SYNC_SAMPLE_FLAGS,
    SYNC_SAMPLE_FLAGS,
    Box,
    Fragment,
    Sample,
    Track,
    init_segment,
    iter_boxes,
    media_segment,
    read_base_decode_times,
    read_track_timescales,
    read_trex_default_durations,
    rewrite_base_decode_times,
    segment_durations,
)
from tidecast.media.frames import AudioConfig, TrackKind, VideoConfig
from tidecast.media.h264 import parse_avcc

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
VIDEO_ID = 1
AUDIO_ID = 2
VIDEO_TS = 90000
AUDIO_TS = 48000
# tfdt = source decode time + offset (the source starts at dts < 0 because of B-frames/priming).
VIDEO_OFFSET = 10 * VIDEO_TS
AUDIO_OFFSET = 10 * AUDIO_TS


def run_ffmpeg(*args: str) -> None:
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args],
        check=True,
        capture_output=True,
    )


def box(box_type: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), box_type) + payload


def children(data: bytes, parent: Box) -> list[Box]:
    return list(iter_boxes(data, parent.payload_start, parent.end))


def find(data: bytes, *path: str) -> list[Box]:
    """All boxes at ``path`` (top-level type first)."""
    level = [b for b in iter_boxes(data) if b.type == path[0]]
    for name in path[1:]:
        level = [c for b in level for c in children(data, b) if c.type == name]
    return level


def full_header(data: bytes, b: Box) -> tuple[int, int]:
    (word,) = struct.unpack_from(">I", data, b.payload_start)
    return word >> 24, word & 0xFFFFFF


# --------------------------------------------------------------------------- source clip


@dataclass
class Packet:
    dts: int  # in the track timescale of our muxer (90 kHz video, 48 kHz audio)
    pts: int
    duration: int
    keyframe: bool
    data: bytes


@dataclass
class Source:
    path: Path
    video_config: VideoConfig
    audio_config: AudioConfig
    video: list[Packet]
    audio: list[Packet]
    video_frames: list[tuple[int, str]]  # decoded (pts in 90 kHz, picture hash), pts order
    tmp: Path


def rescale(value: int, time_base: Fraction, timescale: int) -> int:
    exact = Fraction(value) * time_base * timescale
    assert exact.denominator == 1, f"{value} * {time_base} is not a whole tick of 1/{timescale}"
    return int(exact)


def picture_hash(frame: av.VideoFrame) -> str:
    digest = hashlib.sha1()
    for plane in frame.planes:
        view = memoryview(plane)
        for row in range(plane.height):
            start = row * plane.line_size
            digest.update(view[start : start + plane.width])
    return digest.hexdigest()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    tmp = tmp_path_factory.mktemp("fmp4")
    path = tmp / "source.mp4"
    run_ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30:duration=6",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=6",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
        "-g", "60", "-keyint_min", "60", "-sc_threshold", "0", "-bf", "2",
        "-c:a", "aac", "-b:a", "96k", "-ac", "2",
        str(path),
    )  # fmt: skip
    video: list[Packet] = []
    audio: list[Packet] = []
    with av.open(str(path)) as container:
        vstream = container.streams.video[0]
        astream = container.streams.audio[0]
        assert astream.codec_context.sample_rate == AUDIO_TS
        video_config = parse_avcc(bytes(vstream.codec_context.extradata or b""))
        audio_config = parse_asc(bytes(astream.codec_context.extradata or b""))
        for packet in container.demux():
            if packet.size == 0:
                continue
            assert packet.dts is not None and packet.pts is not None and packet.time_base
            tb = Fraction(packet.time_base)
            scale = VIDEO_TS if packet.stream.type == "video" else AUDIO_TS
            item = Packet(
                dts=rescale(packet.dts, tb, scale),
                pts=rescale(packet.pts, tb, scale),
                duration=rescale(packet.duration or 0, tb, scale),
                keyframe=packet.is_keyframe,
                data=bytes(packet),
            )
            (video if packet.stream.type == "video" else audio).append(item)
    with av.open(str(path)) as container:
        frames = [
            (rescale(f.pts, Fraction(f.time_base), VIDEO_TS), picture_hash(f))
            for f in container.decode(video=0)
        ]
    assert len(video) == 180 and [i for i, p in enumerate(video) if p.keyframe] == [0, 60, 120]
    assert any(p.pts != p.dts for p in video), "expected B-frames / composition offsets"
    return Source(path, video_config, audio_config, video, audio, sorted(frames), tmp)


@dataclass
class Muxed:
    init: bytes
    segments: list[bytes]
    fragments: list[list[Fragment]] = field(default_factory=list)

    @property
    def whole(self) -> bytes:
        return self.init + b"".join(self.segments)


def tracks_for(src: Source) -> list[Track]:
    return [
        Track(VIDEO_ID, src.video_config, VIDEO_TS),
        Track.for_config(AUDIO_ID, src.audio_config),
    ]


def fragments_for(src: Source) -> list[list[Fragment]]:
    """Cut the source at its keyframes into 3 segments of (video, audio) fragments."""
    cuts = [i for i, p in enumerate(src.video) if p.keyframe] + [len(src.video)]
    result = []
    audio_pos = 0
    for index, (start, stop) in enumerate(zip(cuts, cuts[1:], strict=False)):
        vpackets = src.video[start:stop]
        if index == len(cuts) - 2:
            apackets = src.audio[audio_pos:]
        else:
            boundary = src.video[stop].dts  # in 90 kHz
            apackets = [p for p in src.audio[audio_pos:] if p.dts * VIDEO_TS < boundary * AUDIO_TS]
        audio_pos += len(apackets)
        video_fragment = Fragment(
            VIDEO_ID,
            vpackets[0].dts + VIDEO_OFFSET,
            [Sample(p.data, p.duration, p.pts - p.dts, p.keyframe) for p in vpackets],
        )
        audio_fragment = Fragment(
            AUDIO_ID,
            apackets[0].dts + AUDIO_OFFSET,
            [Sample(p.data, p.duration) for p in apackets],
        )
        result.append([video_fragment, audio_fragment])
    assert audio_pos == len(src.audio)
    return result


@pytest.fixture(scope="module")
def muxed(source: Source) -> Muxed:
    fragments = fragments_for(source)
    init = init_segment(tracks_for(source))
    segments = [media_segment(i + 1, frags) for i, frags in enumerate(fragments)]
    return Muxed(init, segments, fragments)


@dataclass
class Decoded:
    video: list[tuple[int, bool, str]]  # (pts, key_frame, hash) in decode output order
    audio: list[int]  # pts
    first_dts: dict[str, int]
    time_bases: dict[str, Fraction]


def decode(data: bytes) -> Decoded:
    video: list[tuple[int, bool, str]] = []
    audio: list[int] = []
    first_dts: dict[str, int] = {}
    time_bases: dict[str, Fraction] = {}
    with av.open(io.BytesIO(data)) as container:
        for stream in container.streams:
            assert stream.time_base is not None
            time_bases[stream.type] = Fraction(stream.time_base)
        for packet in container.demux():
            kind = packet.stream.type
            if packet.size and packet.dts is not None:
                first_dts.setdefault(kind, packet.dts)
            for frame in packet.decode():
                assert frame.pts is not None
                if kind == "video":
                    assert isinstance(frame, av.VideoFrame)
                    video.append((frame.pts, frame.key_frame, picture_hash(frame)))
                else:
                    audio.append(frame.pts)
    return Decoded(video, audio, first_dts, time_bases)


# --------------------------------------------------------------------------- writer structure


def test_init_segment_structure(source: Source, muxed: Muxed) -> None:
    init = muxed.init
    assert [b.type for b in iter_boxes(init)] == ["ftyp", "moov"]
    ftyp = find(init, "ftyp")[0]
    brands = init[ftyp.payload_start : ftyp.end]
    assert brands[:4] == b"iso6"
    assert {brands[i : i + 4] for i in range(8, len(brands), 4)} >= {b"iso6", b"cmfc", b"mp41"}
    assert [b.type for b in children(init, find(init, "moov")[0])] == [
        "mvhd", "trak", "trak", "mvex",
    ]  # fmt: skip
    assert read_track_timescales(init) == {VIDEO_ID: VIDEO_TS, AUDIO_ID: AUDIO_TS}
    assert read_trex_default_durations(init) == {VIDEO_ID: 0, AUDIO_ID: 0}
    stsd = find(init, "moov", "trak", "mdia", "minf", "stbl", "stsd")[0]
    # stsd payload: version/flags + entry_count, then the sample entries.
    entry = list(iter_boxes(init, stsd.payload_start + 8, stsd.end))
    assert entry[0].type == "avc1"
    width, height = struct.unpack_from(">HH", init, entry[0].payload_start + 24)
    assert (width, height) == (640, 360)
    avcc_box = list(iter_boxes(init, entry[0].payload_start + 78, entry[0].end))[0]
    assert avcc_box.type == "avcC"
    assert init[avcc_box.payload_start : avcc_box.end] == source.video_config.avcc
    assert source.audio_config.asc in init  # inside esds / DecoderSpecificInfo
    tkhd = find(init, "moov", "trak", "tkhd")
    assert struct.unpack_from(">II", init, tkhd[0].end - 8) == (640 << 16, 360 << 16)
    assert struct.unpack_from(">h", init, tkhd[1].payload_start + 4 + 32) == (0x0100,)
    handlers = [init[b.payload_start + 8 : b.payload_start + 12] for b in find(
        init, "moov", "trak", "mdia", "hdlr"
    )]  # fmt: skip
    assert handlers == [b"vide", b"soun"]
    with av.open(io.BytesIO(init)) as container:
        assert container.streams.video[0].codec_context.width == 640
        assert container.streams.audio[0].codec_context.sample_rate == AUDIO_TS
        assert container.streams.audio[0].codec_context.channels == 2


def test_media_segment_structure_and_data_offsets(muxed: Muxed) -> None:
    for number, (segment, fragments) in enumerate(
        zip(muxed.segments, muxed.fragments, strict=True), start=1
    ):
        assert [b.type for b in iter_boxes(segment)] == ["styp", "moof", "mdat"]
        moof = find(segment, "moof")[0]
        mfhd = find(segment, "moof", "mfhd")[0]
        assert struct.unpack_from(">I", segment, mfhd.payload_start + 4) == (number,)
        trafs = find(segment, "moof", "traf")
        assert len(trafs) == len(fragments)
        mdat = find(segment, "mdat")[0]
        expected_payload = b"".join(s.data for f in fragments for s in f.samples)
        assert segment[mdat.payload_start : mdat.end] == expected_payload
        for traf, fragment in zip(trafs, fragments, strict=True):
            tfhd, tfdt, trun = children(segment, traf)
            assert (tfhd.type, tfdt.type, trun.type) == ("tfhd", "tfdt", "trun")
            assert full_header(segment, tfhd) == (0, 0x020000)
            assert struct.unpack_from(">I", segment, tfhd.payload_start + 4) == (fragment.track_id,)
            assert full_header(segment, tfdt) == (1, 0)
            assert struct.unpack_from(">Q", segment, tfdt.payload_start + 4) == (
                fragment.base_decode_time,
            )
            version, flags = full_header(segment, trun)
            assert version == 1 and flags == 0x000F01
            count, offset = struct.unpack_from(">Ii", segment, trun.payload_start + 4)
            assert count == len(fragment.samples)
            position = moof.start + offset
            for i, sample in enumerate(fragment.samples):
                duration, size, sample_flags, cts = struct.unpack_from(
                    ">IIIi", segment, trun.payload_start + 12 + 16 * i
                )
                assert (duration, size, cts) == (
                    sample.duration,
                    len(sample.data),
                    sample.cts_offset,
                )
                assert sample_flags == (
                    SYNC_SAMPLE_FLAGS if sample.keyframe else NON_SYNC_SAMPLE_FLAGS
                )
                assert segment[position : position + size] == sample.data
                position += size


def test_segment_reader_helpers_on_our_segments(muxed: Muxed) -> None:
    for segment, fragments in zip(muxed.segments, muxed.fragments, strict=True):
        assert read_base_decode_times(segment) == {
            f.track_id: f.base_decode_time for f in fragments
        }
        assert segment_durations(segment) == {
            f.track_id: sum(s.duration for s in f.samples) for f in fragments
        }
    # Base decode times continue across segments.
    for before, after in zip(muxed.fragments, muxed.fragments[1:], strict=False):
        for a, b in zip(before, after, strict=True):
            assert a.base_decode_time + sum(s.duration for s in a.samples) == b.base_decode_time


# --------------------------------------------------------------------------- decoder round trip


def expected_video_pts(src: Source, offset: int) -> list[int]:
    return [pts + offset for pts, _ in src.video_frames]


def test_round_trip_decodes_identically(source: Source, muxed: Muxed) -> None:
    decoded = decode(muxed.whole)
    assert decoded.time_bases == {"video": Fraction(1, VIDEO_TS), "audio": Fraction(1, AUDIO_TS)}
    # Every picture decodes, bit-exact, at the source timestamps shifted by our tfdt offset.
    assert len(decoded.video) == len(source.video_frames) == 180
    assert sorted((pts, h) for pts, _, h in decoded.video) == [
        (pts + VIDEO_OFFSET, h) for pts, h in source.video_frames
    ]
    assert [pts for pts, _, _ in decoded.video] == expected_video_pts(source, VIDEO_OFFSET)
    # One decoded audio frame per AAC packet (our file has no edit list, so no priming skip).
    assert decoded.audio == [p.pts + AUDIO_OFFSET for p in source.audio]
    assert decoded.first_dts == {
        "video": source.video[0].dts + VIDEO_OFFSET,
        "audio": source.audio[0].dts + AUDIO_OFFSET,
    }


@pytest.mark.parametrize("index", [0, 1, 2])
def test_each_segment_decodes_alone(muxed: Muxed, index: int) -> None:
    video_fragment, audio_fragment = muxed.fragments[index]
    decoded = decode(muxed.init + muxed.segments[index])
    assert decoded.first_dts == {
        "video": video_fragment.base_decode_time,
        "audio": audio_fragment.base_decode_time,
    }
    first_pts, first_key, _ = decoded.video[0]
    assert first_key
    first_sample = video_fragment.samples[0]
    assert first_sample.keyframe
    # The keyframe is presented first (closed GOP); its pts is tfdt + its composition offset.
    assert first_pts == video_fragment.base_decode_time + first_sample.cts_offset
    assert min(pts for pts, _, _ in decoded.video) == first_pts
    assert len(decoded.video) == len(video_fragment.samples)
    assert decoded.audio[0] == audio_fragment.base_decode_time
    assert len(decoded.audio) == len(audio_fragment.samples)


def pyav_durations(data: bytes) -> dict[int, int]:
    """Sum of packet durations per track id, as PyAV's demuxer sees them."""
    totals: dict[int, int] = {}
    with av.open(io.BytesIO(data)) as container:
        for packet in container.demux():
            if packet.size:
                track_id = packet.stream.id
                totals[track_id] = totals.get(track_id, 0) + (packet.duration or 0)
    return totals


# --------------------------------------------------------------------------- tfdt rewriting


def downgrade_tfdt(data: bytes) -> bytes:
    """Test helper: turn every version 1 tfdt into version 0 (fixing sizes/offsets), drop mfra.

    Only handles layouts where every traf's data is addressed relative to its moof
    start (default-base-is-moof, or an explicit base_data_offset equal to the moof start).
    """
    out = bytearray()
    shrink_before = 0
    for top in iter_boxes(data):
        if top.type == "mfra":
            continue
        if top.type != "moof":
            out += data[top.start : top.end]
            continue
        trafs = [b for b in children(data, top) if b.type == "traf"]
        shrink = 4 * sum(
            1
            for t in trafs
            for c in children(data, t)
            if c.type == "tfdt" and data[c.start + 8] == 1
        )
        moof_body = bytearray()
        for child in children(data, top):
            if child.type != "traf":
                moof_body += data[child.start : child.end]
                continue
            traf_body = bytearray()
            for part in children(data, child):
                raw = bytearray(data[part.start : part.end])
                if part.type == "tfdt" and raw[8] == 1:
                    (value,) = struct.unpack_from(">Q", raw, 12)
                    assert value < 2**32
                    raw = bytearray(box(b"tfdt", struct.pack(">II", 0, value)))
                elif part.type == "tfhd":
                    (flags,) = struct.unpack_from(">I", raw, 8)
                    if flags & 1:
                        (base,) = struct.unpack_from(">Q", raw, 16)
                        assert base == top.start
                        struct.pack_into(">Q", raw, 16, base - shrink_before)
                    else:
                        assert flags & 0x020000
                elif part.type == "trun":
                    (flags,) = struct.unpack_from(">I", raw, 8)
                    assert flags & 1
                    (offset,) = struct.unpack_from(">i", raw, 16)
                    struct.pack_into(">i", raw, 16, offset - shrink)
                traf_body += raw
            moof_body += box(b"traf", bytes(traf_body))
        new_moof = box(b"moof", bytes(moof_body))
        assert len(new_moof) == top.size - shrink
        out += new_moof
        shrink_before += shrink
    return bytes(out)


def tfdt_versions(data: bytes) -> list[int]:
    return [full_header(data, b)[0] for b in find(data, "moof", "traf", "tfdt")]


def shifted(decoded: Decoded, video_delta: int, audio_delta: int) -> Decoded:
    return Decoded(
        [(pts + video_delta, key, h) for pts, key, h in decoded.video],
        [pts + audio_delta for pts in decoded.audio],
        {
            "video": decoded.first_dts["video"] + video_delta,
            "audio": decoded.first_dts["audio"] + audio_delta,
        },
        decoded.time_bases,
    )


def test_rewrite_our_segments_round_trip(muxed: Muxed) -> None:
    video_delta = 2**33 + 12345 * 3000  # pushes tfdt past 32 bits
    audio_delta = 7 * AUDIO_TS
    rewritten = []
    for segment in muxed.segments:
        before = read_base_decode_times(segment)
        new = {VIDEO_ID: before[VIDEO_ID] + video_delta, AUDIO_ID: before[AUDIO_ID] + audio_delta}
        out = rewrite_base_decode_times(segment, new)
        assert len(out) == len(segment)  # tfdt already version 1: patched in place
        assert read_base_decode_times(out) == new
        assert segment_durations(out) == segment_durations(segment)
        assert rewrite_base_decode_times(out, before) == segment
        rewritten.append(out)
    original = decode(muxed.whole)
    assert decode(muxed.init + b"".join(rewritten)) == shifted(original, video_delta, audio_delta)


def test_rewrite_single_track_leaves_others(muxed: Muxed) -> None:
    segment = muxed.segments[1]
    before = read_base_decode_times(segment)
    out = rewrite_base_decode_times(segment, {AUDIO_ID: 5})
    assert read_base_decode_times(out) == {VIDEO_ID: before[VIDEO_ID], AUDIO_ID: 5}
    assert rewrite_base_decode_times(segment, {}) == segment


def test_rewrite_upgrades_v0_tfdt(muxed: Muxed) -> None:
    downgraded = [downgrade_tfdt(s) for s in muxed.segments]
    assert all(tfdt_versions(s) == [0, 0] for s in downgraded)
    original = decode(muxed.whole)
    assert decode(muxed.init + b"".join(downgraded)) == original  # the helper is sound
    # Small times keep version 0 and the size.
    small = [rewrite_base_decode_times(s, {AUDIO_ID: read_base_decode_times(s)[AUDIO_ID] + 1})
             for s in downgraded]  # fmt: skip
    assert all(
        tfdt_versions(s) == [0, 0] and len(s) == len(d)
        for s, d in zip(small, downgraded, strict=True)
    )
    # Large times upgrade to version 1: each traf grows by 4 bytes, offsets follow.
    delta = 2**32 + 90000
    upgraded = []
    for segment in downgraded:
        times = read_base_decode_times(segment)
        out = rewrite_base_decode_times(segment, {VIDEO_ID: times[VIDEO_ID] + delta})
        assert tfdt_versions(out) == [1, 0]
        assert len(out) == len(segment) + 4
        assert read_base_decode_times(out) == {
            VIDEO_ID: times[VIDEO_ID] + delta,
            AUDIO_ID: times[AUDIO_ID],
        }
        upgraded.append(out)
    assert decode(muxed.init + b"".join(upgraded)) == shifted(original, delta, 0)


def add_sidx_v0(segment: bytes, reference_id: int, timescale: int, ept: int) -> bytes:
    """Insert a version 0 sidx (one reference: moof + mdat) after the styp."""
    styp, moof, mdat = list(iter_boxes(segment))
    referenced = moof.size + mdat.size
    sidx = box(
        b"sidx",
        struct.pack(">IIIIIHH", 0, reference_id, timescale, ept, 0, 0, 1)
        + struct.pack(">III", referenced, 6 * timescale, 0x90000000),
    )
    return segment[: styp.end] + sidx + segment[styp.end :]


def read_sidx(data: bytes) -> list[tuple[int, int, int, int, list[int]]]:
    """(version, reference_id, ept, first_offset, referenced sizes) of every top-level sidx."""
    result = []
    for b in find(data, "sidx"):
        version, _ = full_header(data, b)
        reference_id, _ = struct.unpack_from(">II", data, b.payload_start + 4)
        fmt = ">QQ" if version else ">II"
        ept, first = struct.unpack_from(fmt, data, b.payload_start + 12)
        pos = b.payload_start + 12 + struct.calcsize(fmt)
        (count,) = struct.unpack_from(">H", data, pos + 2)
        sizes = [
            struct.unpack_from(">I", data, pos + 4 + 12 * i)[0] & 0x7FFFFFFF for i in range(count)
        ]
        result.append((version, reference_id, ept, first, sizes))
    return result


def test_rewrite_upgrades_sidx_and_fixes_references(muxed: Muxed) -> None:
    original = decode(muxed.whole)
    segments = []
    for segment, (video_fragment, _) in zip(muxed.segments, muxed.fragments, strict=True):
        v0 = downgrade_tfdt(segment)
        segments.append(add_sidx_v0(v0, VIDEO_ID, VIDEO_TS, video_fragment.base_decode_time))
    assert decode(muxed.init + b"".join(segments)) == original
    delta = 2**32
    out_segments = []
    for segment, (video_fragment, _) in zip(segments, muxed.fragments, strict=True):
        times = read_base_decode_times(segment)
        out = rewrite_base_decode_times(segment, {k: v + delta for k, v in times.items()})
        assert tfdt_versions(out) == [1, 1]
        _, moof, mdat = [b for b in iter_boxes(out) if b.type != "sidx"]
        assert read_sidx(out) == [
            (1, VIDEO_ID, video_fragment.base_decode_time + delta, 0, [moof.size + mdat.size])
        ]
        assert len(out) == len(segment) + 8 + 8
        out_segments.append(out)
    assert decode(muxed.init + b"".join(out_segments)) == shifted(original, delta, delta)


@pytest.mark.parametrize(
    "movflags", ["+frag_keyframe+empty_moov+default_base_moof", "+frag_keyframe+empty_moov"]
)
def test_rewrite_ffmpeg_fragmented_mp4(source: Source, movflags: str) -> None:
    path = source.tmp / f"frag{len(movflags)}.mp4"
    run_ffmpeg("-i", str(source.path), "-c", "copy", "-f", "mp4", "-movflags", movflags, str(path))
    data = path.read_bytes()
    assert len(find(data, "moof")) == 3
    base_is_moof = "default_base_moof" in movflags
    for tfhd in find(data, "moof", "traf", "tfhd"):
        flags = full_header(data, tfhd)[1]
        assert bool(flags & 0x020000) == base_is_moof and bool(flags & 1) != base_is_moof
    timescales = read_track_timescales(data)
    first = read_base_decode_times(data)
    assert set(first) == set(timescales) == {1, 2}
    assert segment_durations(data, read_trex_default_durations(data)) == pyav_durations(data)

    original = decode(data)
    assert len(original.video) == 180
    video_delta, audio_delta = 2**33, 3 * timescales[2]
    new = {1: first[1] + video_delta, 2: first[2] + audio_delta}
    out = rewrite_base_decode_times(data, new)
    assert read_base_decode_times(out) == new
    assert "mfra" not in [b.type for b in iter_boxes(out)]
    assert decode(out) == shifted(original, video_delta, audio_delta)

    # The version 0 -> 1 upgrade path on ffmpeg's layout (growing every moof).
    v0 = downgrade_tfdt(data)
    assert set(tfdt_versions(v0)) == {0}
    assert decode(v0) == original
    upgraded = rewrite_base_decode_times(v0, new)
    assert tfdt_versions(upgraded) == [1, 0] * 3
    assert len(upgraded) == len(v0) + 3 * 4
    assert decode(upgraded) == shifted(original, video_delta, audio_delta)


def test_rewrite_ffmpeg_hls_fmp4_segments(source: Source) -> None:
    out_dir = source.tmp / "hls"
    out_dir.mkdir()
    run_ffmpeg(
        "-i", str(source.path), "-c", "copy", "-f", "hls", "-hls_segment_type", "fmp4",
        "-hls_time", "2", "-hls_playlist_type", "vod",
        "-hls_fmp4_init_filename", "init.mp4",
        "-hls_segment_filename", str(out_dir / "seg%d.m4s"),
        str(out_dir / "index.m3u8"),
    )  # fmt: skip
    init = (out_dir / "init.mp4").read_bytes()
    segments = [(out_dir / f"seg{i}.m4s").read_bytes() for i in range(3)]
    assert not (out_dir / "seg3.m4s").exists()
    timescales = read_track_timescales(init)
    defaults = read_trex_default_durations(init)
    times = [read_base_decode_times(s) for s in segments]
    durations = [segment_durations(s, defaults) for s in segments]
    for i in range(2):  # ffmpeg's own tfdt continue across its segments
        for track in timescales:
            assert times[i][track] + durations[i][track] == times[i + 1][track]
    totals = pyav_durations(init + b"".join(segments))
    assert {t: sum(d[t] for d in durations) for t in timescales} == totals

    original = decode(init + b"".join(segments))
    assert len(original.video) == 180
    video_delta, audio_delta = 5 * timescales[1] + 2**32, 5 * timescales[2]
    rewritten = []
    for segment, before in zip(segments, times, strict=True):
        new = {1: before[1] + video_delta, 2: before[2] + audio_delta}
        out = rewrite_base_decode_times(segment, new)
        assert read_base_decode_times(out) == new
        assert len(out) == len(segment)
        sidx_before, sidx_after = read_sidx(segment), read_sidx(out)
        assert sidx_before, "ffmpeg's HLS fMP4 segments are expected to carry sidx boxes"
        for b, a in zip(sidx_before, sidx_after, strict=True):
            assert a == (b[0], b[1], b[2] + (video_delta if b[1] == 1 else audio_delta), b[3], b[4])
        rewritten.append(out)
    assert decode(init + b"".join(rewritten)) == shifted(original, video_delta, audio_delta)
    # A segment with a later-start decodes alone at the rewritten time.
    alone = decode(init + rewritten[1])
    assert alone.first_dts["video"] == times[1][1] + video_delta


# --------------------------------------------------------------------------- reader edge cases


def test_iter_boxes_sizes() -> None:
    large = struct.pack(">I4sQ", 1, b"free", 16 + 3) + b"abc"
    uuid = struct.pack(">I4s", 8 + 16 + 2, b"uuid") + bytes(16) + b"xy"
    to_end = struct.pack(">I4s", 0, b"mdat") + b"payload"
    data = large + uuid + to_end
    boxes = list(iter_boxes(data))
    assert boxes == [
        Box("free", 0, 19, 16),
        Box("uuid", 19, 26, 24),
        Box("mdat", 45, 15, 8),
    ]
    assert boxes[0].end == 19 and boxes[0].payload_start == 16
    assert list(iter_boxes(data, 19, 45)) == [Box("uuid", 19, 26, 24)]
    assert list(iter_boxes(b"")) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00\x00", "truncated box header"),
        (struct.pack(">I4s", 16, b"free") + b"abc", "truncated"),
        (struct.pack(">I4s", 4, b"free"), "invalid size"),
        (struct.pack(">I4s", 1, b"free") + b"\x00\x00", "64-bit size"),
        (struct.pack(">I4sQ", 1, b"free", 8), "invalid size"),
        (struct.pack(">I4s", 12, b"uuid") + bytes(4), "invalid size"),
    ],
)
def test_iter_boxes_rejects_malformed(data: bytes, message: str) -> None:
    with pytest.raises(MediaError, match=message):
        list(iter_boxes(data))


def test_iter_boxes_rejects_bad_range() -> None:
    with pytest.raises(MediaError):
        list(iter_boxes(b"12345678", 4, 100))


def test_truncated_segments_raise_media_error(muxed: Muxed) -> None:
    segment = muxed.segments[0]
    moof = find(segment, "moof")[0]
    cuts = {5, 30, moof.start + 4, moof.start + 20, moof.start + 100, moof.end - 3, moof.end + 4}
    cuts |= set(range(moof.start, moof.end, 97))
    for cut in sorted(cuts):
        with pytest.raises(MediaError):
            read_base_decode_times(segment[:cut])
        with pytest.raises(MediaError):
            rewrite_base_decode_times(segment[:cut], {VIDEO_ID: 0})
        with pytest.raises(MediaError):
            segment_durations(segment[:cut])
    with pytest.raises(MediaError):
        read_track_timescales(muxed.init[:-10])


def test_reader_errors(muxed: Muxed) -> None:
    segment = muxed.segments[0]
    with pytest.raises(MediaError, match="no 'moof'"):
        read_base_decode_times(box(b"styp", b"msdh\x00\x00\x00\x00"))
    with pytest.raises(MediaError, match="track 9"):
        rewrite_base_decode_times(segment, {9: 0})
    with pytest.raises(MediaError, match="out of range"):
        rewrite_base_decode_times(segment, {VIDEO_ID: -1})
    with pytest.raises(MediaError, match="out of range"):
        rewrite_base_decode_times(segment, {VIDEO_ID: 2**64})
    with pytest.raises(MediaError, match="no 'moov'"):
        read_track_timescales(segment)
    # A traf without tfdt.
    tfhd = box(b"tfhd", struct.pack(">II", 0x020000, 1))
    moof = box(b"moof", box(b"mfhd", struct.pack(">II", 0, 1)) + box(b"traf", tfhd))
    with pytest.raises(MediaError, match="no 'tfdt'"):
        read_base_decode_times(moof)
    # A trun without durations and no default anywhere.
    trun = box(b"trun", struct.pack(">II", 0x000200, 2) + struct.pack(">II", 5, 6))
    tfdt = box(b"tfdt", struct.pack(">II", 0, 0))
    moof = box(b"moof", box(b"traf", tfhd + tfdt + trun))
    with pytest.raises(MediaError, match="no sample durations"):
        segment_durations(moof)
    assert segment_durations(moof, {1: 1024}) == {1: 2048}
    tfhd_default = box(b"tfhd", struct.pack(">III", 0x020008, 1, 512))
    assert segment_durations(box(b"moof", box(b"traf", tfhd_default + tfdt + trun))) == {1: 1024}
    # A trun that declares more samples than it holds.
    short_trun = box(b"trun", struct.pack(">II", 0x000100, 3) + struct.pack(">I", 5))
    with pytest.raises(MediaError, match="too short"):
        segment_durations(box(b"moof", box(b"traf", tfhd + tfdt + short_trun)))
    bad_tfdt = box(b"tfdt", struct.pack(">II", 2 << 24, 0))
    with pytest.raises(MediaError, match="version 2"):
        read_base_decode_times(box(b"moof", box(b"traf", tfhd + bad_tfdt)))


# --------------------------------------------------------------------------- writer validation


def test_writer_rejects_invalid_arguments(source: Source) -> None:
    tracks = tracks_for(source)
    with pytest.raises(MediaError):
        init_segment([])
    with pytest.raises(MediaError, match="duplicate"):
        init_segment([tracks[0], Track(VIDEO_ID, source.audio_config, AUDIO_TS)])
    with pytest.raises(MediaError):
        init_segment([Track(0, source.video_config, VIDEO_TS)])
    with pytest.raises(MediaError):
        init_segment([Track(1, source.video_config, 0)])
    sample = Sample(b"x", 3000)
    with pytest.raises(MediaError):
        media_segment(1, [])
    with pytest.raises(MediaError, match="no samples"):
        media_segment(1, [Fragment(1, 0, [])])
    with pytest.raises(MediaError, match="more than one fragment"):
        media_segment(1, [Fragment(1, 0, [sample]), Fragment(1, 10, [sample])])
    with pytest.raises(MediaError):
        media_segment(1, [Fragment(1, -1, [sample])])
    with pytest.raises(MediaError):
        media_segment(-1, [Fragment(1, 0, [sample])])
    with pytest.raises(MediaError):
        media_segment(1, [Fragment(1, 0, [Sample(b"x", -1)])])
    with pytest.raises(MediaError):
        media_segment(1, [Fragment(1, 0, [Sample(b"x", 1, 2**31)])])


def test_track_helpers(source: Source) -> None:
    video = Track.for_config(3, source.video_config)
    audio = Track.for_config(4, source.audio_config)
    assert (video.timescale, video.kind) == (VIDEO_TS, TrackKind.VIDEO)
    assert (audio.timescale, audio.kind) == (AUDIO_TS, TrackKind.AUDIO)


def test_negative_composition_offsets_and_large_times(source: Source) -> None:
    """Signed cts offsets and 64-bit base times survive a write/read/decode cycle."""
    gop = source.video[:60]
    base = 2**40
    shift = 2 * 3000  # make the first keyframe's pts == its dts via negative offsets
    samples = [Sample(p.data, p.duration, p.pts - p.dts - shift, p.keyframe) for p in gop]
    assert min(s.cts_offset for s in samples) < 0
    segment = media_segment(7, [Fragment(VIDEO_ID, base, samples)])
    init = init_segment([Track(VIDEO_ID, source.video_config, VIDEO_TS)])
    assert read_base_decode_times(segment) == {VIDEO_ID: base}
    decoded = decode(init + segment)
    assert len(decoded.video) == 60
    # FFmpeg's mov demuxer delays pts by -min(cts_offset) ("dts_shift") so that pts >= dts.
    # Read as unsigned, a negative offset would instead land ~2**32 ticks away.
    dts_shift = -min(s.cts_offset for s in samples)
    assert decoded.video[0][:2] == (base + dts_shift, True)
    assert sorted(pts for pts, _, _ in decoded.video) == [
        base + dts_shift + 3000 * i for i in range(60)
    ]
    trun = find(segment, "moof", "traf", "trun")[0]
    offsets = [
        struct.unpack_from(">i", segment, trun.payload_start + 12 + 16 * i + 12)[0]
        for i in range(60)
    ]
    assert offsets == [s.cts_offset for s in samples]


def test_large_segment_uses_data_offsets_past_64k(source: Source) -> None:
    samples = [Sample(bytes([i]) * 70000, 1024) for i in range(3)]
    config = source.audio_config
    segment = media_segment(1, [Fragment(AUDIO_ID, 0, samples[:2]), Fragment(5, 9, samples[2:])])
    moof = find(segment, "moof")[0]
    truns = find(segment, "moof", "traf", "trun")
    offsets = [struct.unpack_from(">i", segment, t.payload_start + 8)[0] for t in truns]
    assert segment[moof.start + offsets[1] : moof.start + offsets[1] + 70000] == samples[2].data
    assert segment_durations(segment) == {AUDIO_ID: 2048, 5: 1024}
    assert init_segment([Track.for_config(AUDIO_ID, config)])


def _mutations(data: bytes, start: int, stop: int) -> Iterator[bytes]:
    for pos in range(start, stop, 3):
        yield data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1 :]


def test_corrupted_moof_never_raises_unexpected_errors(muxed: Muxed) -> None:
    segment = muxed.segments[2]
    moof = find(segment, "moof")[0]
    for mutated in _mutations(segment, 0, moof.start + 400):
        for call in (
            lambda d: read_base_decode_times(d),
            lambda d: segment_durations(d, {1: 1, 2: 1}),
            lambda d: rewrite_base_decode_times(d, {}),
        ):
            with contextlib.suppress(MediaError):
                call(mutated)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_media_error(data: bytes) -> None:
    for call in (
        lambda d: list(iter_boxes(d)),
        lambda d: read_base_decode_times(d),
        lambda d: read_track_timescales(d),
        lambda d: segment_durations(d, {}),
        lambda d: rewrite_base_decode_times(d, {}),
    ):
        with contextlib.suppress(MediaError):
            call(data)


# --------------------------------------------------------------------------- reading samples


def test_read_samples_gives_back_what_was_written(muxed: Muxed) -> None:
    from tidecast.media.fmp4 import read_samples

    for segment, frags in zip(muxed.segments, muxed.fragments, strict=True):
        got = read_samples(segment)
        for frag in frags:
            samples = got[frag.track_id]
            assert [s.sample() for s in samples] == list(frag.samples)
            assert samples[0].dts == frag.base_decode_time
            assert [b.dts - a.dts for a, b in zip(samples, samples[1:], strict=False)] == [
                s.duration for s in frag.samples[:-1]]  # fmt: skip
    # a chunk without styp, and several chunks one after the other, read the same
    chunks = [media_segment(i + 1, frags, styp=False) for i, frags in enumerate(muxed.fragments)]
    assert [b.type for b in iter_boxes(chunks[0])] == ["moof", "mdat"]
    joined = read_samples(b"".join(chunks))
    assert joined == {
        tid: [s for seg in muxed.segments for s in read_samples(seg)[tid]] for tid in (VIDEO_ID, AUDIO_ID)
    }
    assert decode(muxed.init + b"".join(chunks)) == decode(muxed.init + b"".join(muxed.segments))


def test_read_samples_of_ffmpeg_fragments(source: Source) -> None:
    from tidecast.media.fmp4 import read_samples

    path = source.tmp / "every-frame.mp4"
    run_ffmpeg("-i", str(source.path), "-c", "copy", "-f", "mp4",
               "-movflags", "+frag_every_frame+empty_moov+default_base_moof", str(path))  # fmt: skip
    data = path.read_bytes()
    got = read_samples(data)
    with av.open(str(path)) as c:
        packets = [p for p in c.demux(c.streams.video[0]) if p.size]
        want = [(p.dts, p.pts, p.is_keyframe, bytes(p)) for p in packets]
    assert [(s.dts, s.pts, s.keyframe, s.data) for s in got[1]] == want
