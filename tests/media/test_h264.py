"""Tests for tidecast.media.h264: avcC / SPS parsing, codec strings and AVCC NAL splitting.

Known-answer vectors are either built bit by bit with a small SPS writer below or are
real avcC records produced by libx264 (the expected sizes were checked against PyAV).
A parametrized test also encodes fresh clips with the bundled ffmpeg and compares the
parser with PyAV's view of the same stream.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import av
import imageio_ffmpeg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidecast.media.errors import MediaError
from tidecast.media.h264 import (
    avc_codec_string,
    avcc_nal_units,
    nal_length_size,
    parse_avcc,
    parse_sps,
    unescape_rbsp,
)

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
PPS = bytes.fromhex("68ce3880")


class BitWriter:
    """MSB-first bit writer with exp-Golomb codes (test-side mirror of the parser)."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, n: int, value: int) -> BitWriter:
        assert 0 <= value < (1 << n) or n == 0
        self.bits += [(value >> i) & 1 for i in reversed(range(n))]
        return self

    def ue(self, value: int) -> BitWriter:
        code = value + 1
        return self.u(code.bit_length() - 1, 0).u(code.bit_length(), code)

    def se(self, value: int) -> BitWriter:
        return self.ue(2 * value - 1 if value > 0 else -2 * value)

    def rbsp(self) -> bytes:
        bits = [*self.bits, 1]  # rbsp_stop_one_bit
        bits += [0] * (-len(bits) % 8)
        return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


def escape(rbsp: bytes) -> bytes:
    """Insert emulation-prevention bytes."""
    out = bytearray()
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def make_sps(
    *,
    profile_idc: int = 100,
    constraints: int = 0,
    level_idc: int = 40,
    width_mbs: int = 120,
    height_map_units: int = 68,
    frame_mbs_only: bool = True,
    crop: tuple[int, int, int, int] | None = None,
    chroma_format_idc: int = 1,
    separate_colour_plane: bool = False,
    bit_depth: int = 8,
    scaling_lists: dict[int, list[int]] | None = None,
    poc_type: int = 0,
    poc_cycle: tuple[int, ...] = (),
    sps_id: int = 0,
) -> bytes:
    w = BitWriter().u(8, profile_idc).u(8, constraints).u(8, level_idc).ue(sps_id)
    if profile_idc in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        w.ue(chroma_format_idc)
        if chroma_format_idc == 3:
            w.u(1, int(separate_colour_plane))
        w.ue(bit_depth - 8).ue(bit_depth - 8).u(1, 0)
        if scaling_lists is None:
            w.u(1, 0)
        else:
            w.u(1, 1)
            for i in range(8 if chroma_format_idc != 3 else 12):
                deltas = scaling_lists.get(i)
                w.u(1, deltas is not None)
                for delta in deltas or []:
                    w.se(delta)
    w.ue(0)  # log2_max_frame_num_minus4
    w.ue(poc_type)
    if poc_type == 0:
        w.ue(2)
    elif poc_type == 1:
        w.u(1, 0).se(-1).se(2).ue(len(poc_cycle))
        for value in poc_cycle:
            w.se(value)
    w.ue(4).u(1, 0)  # max_num_ref_frames, gaps
    w.ue(width_mbs - 1).ue(height_map_units - 1).u(1, int(frame_mbs_only))
    if not frame_mbs_only:
        w.u(1, 1)  # mb_adaptive_frame_field_flag
    w.u(1, 1)  # direct_8x8_inference_flag
    if crop is None:
        w.u(1, 0)
    else:
        w.u(1, 1)
        for value in crop:
            w.ue(value)
    w.u(1, 0)  # vui_parameters_present_flag
    return b"\x67" + escape(w.rbsp())


def make_avcc(sps: bytes, pps: bytes = PPS, length_size: int = 4) -> bytes:
    return (
        bytes([1, sps[1], sps[2], sps[3], 0xFC | (length_size - 1), 0xE1])
        + len(sps).to_bytes(2, "big")
        + sps
        + b"\x01"
        + len(pps).to_bytes(2, "big")
        + pps
    )


# --------------------------------------------------------------------------- known answers


@pytest.mark.parametrize(
    ("kwargs", "size", "codec"),
    [
        (  # 1080p High: 1088 coded lines, 8 cropped (crop unit 2 in 4:2:0)
            {"profile_idc": 100, "level_idc": 40, "crop": (0, 0, 0, 4)},
            (1920, 1080),
            "avc1.640028",
        ),
        (  # 720p Main, no cropping
            {"profile_idc": 77, "constraints": 0x40, "level_idc": 31, "width_mbs": 80,
             "height_map_units": 45},
            (1280, 720),
            "avc1.4d401f",
        ),
        (  # Constrained Baseline 320x240
            {"profile_idc": 66, "constraints": 0xC0, "level_idc": 13, "width_mbs": 20,
             "height_map_units": 15},
            (320, 240),
            "avc1.42c00d",
        ),
        (  # interlaced 1080: 34 map units of field pairs, crop unit 4 lines
            {"profile_idc": 77, "constraints": 0x40, "level_idc": 40, "height_map_units": 34,
             "frame_mbs_only": False, "crop": (0, 0, 0, 2)},
            (1920, 1080),
            "avc1.4d4028",
        ),
        (  # High 4:4:4, odd size: crop unit 1x1
            {"profile_idc": 244, "level_idc": 13, "chroma_format_idc": 3, "width_mbs": 21,
             "height_map_units": 16, "crop": (0, 15, 0, 15)},
            (321, 241),
            "avc1.f4000d",
        ),
        (  # High 4:2:2: crop unit 2x1
            {"profile_idc": 122, "level_idc": 30, "chroma_format_idc": 2, "width_mbs": 41,
             "height_map_units": 23, "crop": (1, 2, 3, 3)},
            (656 - 6, 368 - 6),
            "avc1.7a001e",
        ),
        (  # monochrome (High, chroma_format_idc 0): crop unit 1x1 for progressive
            {"profile_idc": 100, "level_idc": 11, "chroma_format_idc": 0, "width_mbs": 13,
             "height_map_units": 7, "crop": (1, 2, 3, 4)},
            (208 - 3, 112 - 7),
            "avc1.64000b",
        ),
        (  # 4:4:4 with separate colour planes -> ChromaArrayType 0, interlaced: unit 1x2
            {"profile_idc": 244, "chroma_format_idc": 3, "separate_colour_plane": True,
             "width_mbs": 10, "height_map_units": 5, "frame_mbs_only": False, "crop": (3, 0, 1, 1)},
            (160 - 3, 160 - 4),
            "avc1.f40028",
        ),
        (  # scaling matrices (4:2:0 -> 8 lists, one ending early via next_scale 0)
            {"scaling_lists": {0: [0] * 16, 3: [-8], 6: [1] * 64, 7: [5, -5] + [0] * 62},
             "width_mbs": 44, "height_map_units": 25, "crop": (0, 0, 0, 2), "level_idc": 30},
            (704, 396),
            "avc1.64001e",
        ),
        (  # 4:4:4 scaling matrices -> 12 lists
            {"profile_idc": 244, "chroma_format_idc": 3, "bit_depth": 10,
             "scaling_lists": {i: [1] * (16 if i < 6 else 64) for i in range(12)},
             "width_mbs": 40, "height_map_units": 30},
            (640, 480),
            "avc1.f40028",
        ),
        (  # pic_order_cnt_type 1 with a reference cycle, sps id 31
            {"poc_type": 1, "poc_cycle": (1, -2, 3), "sps_id": 31, "width_mbs": 8,
             "height_map_units": 6},
            (128, 96),
            "avc1.640028",
        ),
        (  # pic_order_cnt_type 2
            {"poc_type": 2, "profile_idc": 66, "level_idc": 10, "width_mbs": 11,
             "height_map_units": 9},
            (176, 144),
            "avc1.42000a",
        ),
    ],
)  # fmt: skip
def test_synthetic_sps_known_answers(
    kwargs: dict[str, object], size: tuple[int, int], codec: str
) -> None:
    sps = make_sps(**kwargs)  # type: ignore[arg-type]
    config = parse_avcc(make_avcc(sps))
    assert (config.width, config.height) == size
    assert config.codec == codec
    info = parse_sps(sps)
    assert (info.width, info.height) == size
    assert info.frame_mbs_only == kwargs.get("frame_mbs_only", True)


def test_sps_details() -> None:
    info = parse_sps(
        make_sps(profile_idc=110, bit_depth=10, chroma_format_idc=1, crop=(1, 1, 0, 0))
    )
    assert (info.profile_idc, info.bit_depth_luma, info.bit_depth_chroma) == (110, 10, 10)
    assert (info.coded_width, info.crop_left, info.crop_right) == (1920, 2, 2)
    assert info.width == 1916
    assert parse_sps(make_sps(sps_id=7)).seq_parameter_set_id == 7
    assert parse_sps(
        make_sps(chroma_format_idc=3, separate_colour_plane=True)
    ).separate_colour_plane


# Real avcC records written by libx264 (via ffmpeg -> mp4), with PyAV's width/height.
REAL_AVCC = [
    ("0164001effe100186764001eacd940b424d8088000000300800000190f8a14cb01000468fe8fcbfdf8f800",
     720, 576, "avc1.64001e"),
    ("01640028ffe1001b67640028acd940780227e5c044000003000400000300c83c60c65801000468ef8fcbfdf8f800",
     1920, 1080, "avc1.640028"),
    ("014d401fffe10019674d401feca02802dd80880000030008000003019078c18cb001000468ef8fc8",
     1280, 720, "avc1.4d401f"),
    ("0142c00dffe100166742c00dda0507ec0440000003004000000c83c50aa801000468ce0fc8",
     320, 240, "avc1.42c00d"),
    ("014d4028ffe10019674d4028f403c0227ef011000003000100000300321f162ea001000468de0fc8",
     1920, 1080, "avc1.4d4028"),  # interlaced (PAFF/MBAFF)
    ("01f4000dffe1002067f4000d919b282a10f08421ff81e501e5880000030008000003019078a14cb0"
     "01000668ebe3c44844fff8f800", 321, 241, "avc1.f4000d"),  # High 4:4:4 Predictive
    ("017a001effe10019677a001ebcb405217f113e0220000003002000000641e2c5d401000468ce0fc8fef8f800",
     642, 362, "avc1.7a001e"),  # High 4:2:2
    ("016e001effe10019676e001ea6cb405017fcb808800000030080000019078b175001000468ce0fc8fdfafa00",
     640, 360, "avc1.6e001e"),  # High 10
    ("0164000bffe1001a6764000bf2d069fc4c6e02d9000003000100000300320f142aa001000468ce0fc8fcf8f800",
     200, 100, "avc1.64000b"),  # monochrome
    ("0164001effe100186764001eacb405819fde0220000003002000000641e2c5d401000568ce0fc40cfdf8f800",
     704, 396, "avc1.64001e"),  # x264 cqm=jvt: scaling matrices in the SPS
]  # fmt: skip


@pytest.mark.parametrize(("avcc_hex", "width", "height", "codec"), REAL_AVCC)
def test_real_avcc_vectors(avcc_hex: str, width: int, height: int, codec: str) -> None:
    avcc = bytes.fromhex(avcc_hex)
    config = parse_avcc(avcc)
    assert (config.width, config.height, config.codec) == (width, height, codec)
    assert config.avcc == avcc
    assert nal_length_size(avcc) == 4


@pytest.mark.parametrize(
    ("size", "args"),
    [
        ("320x240", ["-preset", "ultrafast", "-profile:v", "baseline", "-pix_fmt", "yuv420p"]),
        ("1280x720", ["-preset", "veryfast", "-profile:v", "main", "-pix_fmt", "yuv420p"]),
        ("1920x1080", ["-preset", "veryfast", "-profile:v", "high", "-pix_fmt", "yuv420p"]),
        ("854x480", ["-preset", "ultrafast", "-pix_fmt", "yuv422p"]),
        ("322x242", ["-preset", "ultrafast", "-vf", "scale=321:241", "-pix_fmt", "yuv444p"]),
        ("720x576", ["-preset", "veryfast", "-pix_fmt", "yuv420p", "-flags", "+ildct+ilme",
                     "-x264-params", "interlaced=1"]),
        ("426x240", ["-preset", "veryfast", "-pix_fmt", "yuv420p10le"]),
        ("700x394", ["-preset", "veryfast", "-pix_fmt", "yuv420p", "-x264-params", "cqm=jvt"]),
    ],
)  # fmt: skip
def test_matches_pyav_on_fresh_encodes(tmp_path: Path, size: str, args: list[str]) -> None:
    out = tmp_path / "clip.mp4"
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi",
         "-i", f"testsrc2=size={size}:rate=25", "-frames:v", "2", "-c:v", "libx264", *args,
         str(out)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        avcc = bytes(stream.codec_context.extradata or b"")
        config = parse_avcc(avcc)
        assert (config.width, config.height) == (
            stream.codec_context.width,
            stream.codec_context.height,
        )
        assert config.codec == "avc1." + avcc[1:4].hex()
        length_size = nal_length_size(avcc)
        packet = next(p for p in container.demux(stream) if p.size)
        units = avcc_nal_units(bytes(packet), length_size)
        assert sum(len(u) + length_size for u in units) == packet.size
        assert 5 in {u[0] & 0x1F for u in units}  # the first picture is an IDR


# --------------------------------------------------------------------------- helpers


def test_codec_string() -> None:
    assert avc_codec_string(100, 0, 40) == "avc1.640028"
    assert avc_codec_string(0x42, 0xE0, 0x1E) == "avc1.42e01e"
    with pytest.raises(MediaError):
        avc_codec_string(256, 0, 0)


def test_unescape_rbsp() -> None:
    assert unescape_rbsp(b"\x00\x00\x03\x01") == b"\x00\x00\x01"
    assert unescape_rbsp(b"\x00\x00\x03\x00\x00\x03") == b"\x00\x00\x00\x00"
    assert unescape_rbsp(b"\x12\x00\x03") == b"\x12\x00\x03"
    assert unescape_rbsp(b"abc") == b"abc"


def test_emulation_prevention_is_removed_before_parsing() -> None:
    # Huge offset_for_ref_frame values are long runs of zero bits -> escaped bytes, and
    # the picture size is coded after them, so it only comes out right if unescaped.
    sps = make_sps(
        poc_type=1, poc_cycle=(1 << 20, -(1 << 21), 3), width_mbs=45, height_map_units=30
    )
    assert b"\x00\x00\x03" in sps[:-4]
    info = parse_sps(sps)
    assert (info.width, info.height) == (720, 480)


def test_nal_length_size_variants() -> None:
    sps = make_sps()
    assert [nal_length_size(make_avcc(sps, length_size=n)) for n in (1, 2, 4)] == [1, 2, 4]
    with pytest.raises(MediaError, match="lengthSizeMinusOne"):
        nal_length_size(make_avcc(sps, length_size=3))


@pytest.mark.parametrize("length_size", [1, 2, 4])
def test_avcc_nal_units_split(length_size: int) -> None:
    units = [b"\x65" + bytes(range(40)), b"\x06\x05", b"\x41\x9a"]
    data = b"".join(len(u).to_bytes(length_size, "big") + u for u in units)
    assert avcc_nal_units(data, length_size) == units
    assert avcc_nal_units(b"", length_size) == []
    with pytest.raises(MediaError, match="declares"):
        avcc_nal_units(data[:-1], length_size)
    if length_size > 1:
        with pytest.raises(MediaError, match="length prefix"):
            avcc_nal_units(data + b"\x00" * (length_size - 1), length_size)


def test_avcc_nal_units_errors() -> None:
    with pytest.raises(MediaError, match="length prefix"):
        avcc_nal_units(b"\x00\x00\x01")
    with pytest.raises(MediaError, match="empty NAL"):
        avcc_nal_units(b"\x00\x00\x00\x00")
    with pytest.raises(MediaError, match="invalid NAL length size"):
        avcc_nal_units(b"\x00\x00\x01\x65", 3)


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("avcc", "message"),
    [
        (b"", "too short"),
        (b"\x01\x64\x00\x28\xff\xe1", "too short"),
        (b"\x02\x64\x00\x28\xff\xe1\x00\x00", "configurationVersion"),
        (b"\x01\x64\x00\x28\xff\xe0\x01\x00\x04" + PPS, "no SPS"),
        (b"\x01\x64\x00\x28\xff\xe1\x00\x20\x67\x64", "truncated in SPS #0"),
        (b"\x01\x64\x00\x28\xff\xe1\x00", "length of SPS #0"),
        (b"\x01\x64\x00\x28\xff\xe1\x00\x00\x01", "SPS #0 is empty"),
        (make_avcc(make_sps())[:-2], "truncated in PPS #0"),
        (make_avcc(make_sps())[: 8 + len(make_sps())], "before the PPS count"),
        (make_avcc(PPS), "expected an SPS"),
        (make_avcc(b"\xe7" + make_sps()[1:]), "forbidden_zero_bit"),
    ],
)
def test_malformed_avcc(avcc: bytes, message: str) -> None:
    with pytest.raises(MediaError, match=message):
        parse_avcc(avcc)


def test_malformed_sps_fields() -> None:
    with pytest.raises(MediaError, match="chroma_format_idc"):
        parse_sps(make_sps(chroma_format_idc=4))
    with pytest.raises(MediaError, match="seq_parameter_set_id"):
        parse_sps(make_sps(sps_id=32))
    with pytest.raises(MediaError, match="pic_order_cnt_type"):
        parse_sps(make_sps(poc_type=3))
    with pytest.raises(MediaError, match="leaves no picture"):
        parse_sps(make_sps(crop=(0, 0, 0, 544)))
    with pytest.raises(MediaError, match="leaves no picture"):
        parse_sps(make_sps(crop=(960, 0, 0, 0)))
    with pytest.raises(MediaError, match="delta_scale"):
        parse_sps(make_sps(scaling_lists={0: [200]}))
    with pytest.raises(MediaError, match="implausible"):
        parse_sps(make_sps(width_mbs=5000))
    with pytest.raises(MediaError, match="exp-Golomb"):
        parse_sps(b"\x67\x64\x00\x28" + bytes(8) + b"\x01")
    with pytest.raises(MediaError, match="too short"):
        parse_sps(b"\x67\x64")


def test_truncated_sps_raises_media_error_only() -> None:
    sps = make_sps(scaling_lists={0: [1] * 16}, crop=(0, 0, 0, 4), poc_type=1, poc_cycle=(1, 2))
    full = parse_sps(sps)
    for cut in range(len(sps)):
        try:
            info = parse_sps(sps[:cut])
        except MediaError as exc:
            assert "SPS" in str(exc)
        else:  # only the trailing VUI/stop bits may be missing
            assert info == full


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_only_raise_media_error(data: bytes) -> None:
    for call in (
        lambda: parse_avcc(data),
        lambda: parse_sps(b"\x67" + data),
        lambda: avcc_nal_units(data),
        lambda: avcc_nal_units(data, 2),
        lambda: nal_length_size(data),
    ):
        with contextlib.suppress(MediaError):
            call()


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.integers(min_value=0, max_value=200))
def test_corrupted_real_avcc_only_raises_media_error(noise: bytes, position: int) -> None:
    avcc = bytearray(bytes.fromhex(REAL_AVCC[1][0]))
    position %= len(avcc)
    avcc[position : position + len(noise)] = noise
    with contextlib.suppress(MediaError):
        parse_avcc(bytes(avcc))
