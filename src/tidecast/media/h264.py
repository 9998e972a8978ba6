"""H.264 / AVC configuration parsing.

This module owns everything tidecast needs to know about an H.264 bitstream
without decoding it:

* the ``AVCDecoderConfigurationRecord`` (``avcC``, ISO/IEC 14496-15 §5.3.3) that
  RTMP/FLV and MP4 carry as the "sequence header" (:func:`parse_avcc`,
  :func:`nal_length_size`);
* the sequence parameter set (ITU-T H.264 §7.3.2.1.1): picture size with frame
  cropping, interlace (``frame_mbs_only_flag``), chroma format, bit depths and the
  scaling lists of the High profiles (:func:`parse_sps`);
* the RFC 6381 codec string (``avc1.PPCCLL``) used in HLS playlists;
* splitting an AVCC (length-prefixed) access unit into NAL units
  (:func:`avcc_nal_units`).

All functions are pure. Malformed input raises :class:`MediaError` with a message
that says what was being read; no ``IndexError`` escapes.
"""

from __future__ import annotations

from dataclasses import dataclass

from tidecast.media.bits import BitReader
from tidecast.media.errors import MediaError
from tidecast.media.frames import VideoConfig

__all__ = [
    "NAL_SPS",
    "NAL_PPS",
    "NAL_IDR",
    "SpsInfo",
    "avc_codec_string",
    "avcc_nal_units",
    "nal_length_size",
    "parse_avcc",
    "parse_sps",
    "unescape_rbsp",
]

NAL_IDR = 5
NAL_SPS = 7
NAL_PPS = 8

# profile_idc values whose SPS carries chroma_format_idc, bit depths and scaling lists.
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})

# Largest picture dimension an MP4 track header (16.16 fixed point) can describe.
_MAX_DIMENSION = 65535


@dataclass(frozen=True, slots=True)
class SpsInfo:
    """The fields of a sequence parameter set that matter for packaging."""

    profile_idc: int
    constraint_flags: int  # constraint_set0..5 flags + reserved bits, as one byte
    level_idc: int
    seq_parameter_set_id: int
    chroma_format_idc: int  # 0 = monochrome, 1 = 4:2:0, 2 = 4:2:2, 3 = 4:4:4
    separate_colour_plane: bool
    bit_depth_luma: int
    bit_depth_chroma: int
    frame_mbs_only: bool  # False: the stream may contain field pictures (interlaced)
    coded_width: int  # before cropping
    coded_height: int
    crop_left: int  # in luma samples
    crop_right: int
    crop_top: int
    crop_bottom: int

    @property
    def width(self) -> int:
        """Displayed (cropped) width in luma samples."""
        return self.coded_width - self.crop_left - self.crop_right

    @property
    def height(self) -> int:
        """Displayed (cropped) frame height in luma samples."""
        return self.coded_height - self.crop_top - self.crop_bottom

    @property
    def codec(self) -> str:
        """RFC 6381 codec string, e.g. ``"avc1.640028"``."""
        return avc_codec_string(self.profile_idc, self.constraint_flags, self.level_idc)


def unescape_rbsp(data: bytes) -> bytes:
    """Remove emulation-prevention bytes: every ``00 00 03`` becomes ``00 00``."""
    if b"\x00\x00\x03" not in data:
        return data
    out = bytearray()
    zeros = 0
    for byte in data:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def avc_codec_string(profile_idc: int, constraint_flags: int, level_idc: int) -> str:
    """RFC 6381 ``avc1.PPCCLL`` codec string (lowercase hex)."""
    for name, value in (
        ("profile_idc", profile_idc),
        ("constraint_flags", constraint_flags),
        ("level_idc", level_idc),
    ):
        if not 0 <= value <= 0xFF:
            raise MediaError(f"{name} {value} does not fit in a byte")
    return f"avc1.{profile_idc:02x}{constraint_flags:02x}{level_idc:02x}"


def _skip_scaling_list(reader: BitReader, size: int, index: int) -> None:
    """Consume one ``scaling_list()`` (H.264 §7.3.2.1.1.1)."""
    last_scale = 8
    next_scale = 8
    for _ in range(size):
        if next_scale != 0:
            delta = reader.se(f"delta_scale of scaling list {index}")
            if not -128 <= delta <= 127:
                raise MediaError(
                    f"SPS: delta_scale {delta} of scaling list {index} is out of range"
                )
            next_scale = (last_scale + delta + 256) % 256
        last_scale = last_scale if next_scale == 0 else next_scale


def parse_sps(nal: bytes) -> SpsInfo:
    """Parse a sequence parameter set NAL unit (including its one-byte NAL header).

    Emulation-prevention bytes are removed before parsing. Raises
    :class:`MediaError` if the NAL unit is not an SPS or is malformed.
    """
    if len(nal) < 4:
        raise MediaError(f"SPS NAL unit too short ({len(nal)} bytes)")
    header = nal[0]
    if header & 0x80:
        raise MediaError("SPS NAL unit has forbidden_zero_bit set")
    if header & 0x1F != NAL_SPS:
        raise MediaError(f"expected an SPS NAL unit (type 7), got type {header & 0x1F}")
    r = BitReader(unescape_rbsp(nal[1:]), "SPS")

    profile_idc = r.u(8, "profile_idc")
    constraint_flags = r.u(8, "constraint flags")
    level_idc = r.u(8, "level_idc")
    sps_id = r.ue("seq_parameter_set_id", 31)

    chroma_format_idc = 1
    separate_colour_plane = False
    bit_depth_luma = 8
    bit_depth_chroma = 8
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = r.ue("chroma_format_idc", 3)
        if chroma_format_idc == 3:
            separate_colour_plane = r.flag("separate_colour_plane_flag")
        bit_depth_luma = 8 + r.ue("bit_depth_luma_minus8", 6)
        bit_depth_chroma = 8 + r.ue("bit_depth_chroma_minus8", 6)
        r.flag("qpprime_y_zero_transform_bypass_flag")
        if r.flag("seq_scaling_matrix_present_flag"):
            for i in range(8 if chroma_format_idc != 3 else 12):
                if r.flag(f"seq_scaling_list_present_flag[{i}]"):
                    _skip_scaling_list(r, 16 if i < 6 else 64, i)

    r.ue("log2_max_frame_num_minus4", 12)
    pic_order_cnt_type = r.ue("pic_order_cnt_type", 2)
    if pic_order_cnt_type == 0:
        r.ue("log2_max_pic_order_cnt_lsb_minus4", 12)
    elif pic_order_cnt_type == 1:
        r.flag("delta_pic_order_always_zero_flag")
        r.se("offset_for_non_ref_pic")
        r.se("offset_for_top_to_bottom_field")
        cycle = r.ue("num_ref_frames_in_pic_order_cnt_cycle", 255)
        for i in range(cycle):
            r.se(f"offset_for_ref_frame[{i}]")
    r.ue("max_num_ref_frames")
    r.flag("gaps_in_frame_num_value_allowed_flag")
    width_mbs = r.ue("pic_width_in_mbs_minus1") + 1
    height_map_units = r.ue("pic_height_in_map_units_minus1") + 1
    frame_mbs_only = r.flag("frame_mbs_only_flag")
    if not frame_mbs_only:
        r.flag("mb_adaptive_frame_field_flag")
    r.flag("direct_8x8_inference_flag")
    crop = (0, 0, 0, 0)
    if r.flag("frame_cropping_flag"):
        crop = (
            r.ue("frame_crop_left_offset"),
            r.ue("frame_crop_right_offset"),
            r.ue("frame_crop_top_offset"),
            r.ue("frame_crop_bottom_offset"),
        )

    coded_width = width_mbs * 16
    coded_height = (2 - frame_mbs_only) * height_map_units * 16
    if coded_width > _MAX_DIMENSION or coded_height > _MAX_DIMENSION:
        raise MediaError(f"SPS: implausible picture size {coded_width}x{coded_height}")

    chroma_array_type = 0 if separate_colour_plane else chroma_format_idc
    if chroma_array_type == 0:
        crop_unit_x = 1
        crop_unit_y = 2 - frame_mbs_only
    else:
        sub_width_c = 1 if chroma_format_idc == 3 else 2
        sub_height_c = 2 if chroma_format_idc == 1 else 1
        crop_unit_x = sub_width_c
        crop_unit_y = sub_height_c * (2 - frame_mbs_only)
    left, right, top, bottom = crop
    info = SpsInfo(
        profile_idc=profile_idc,
        constraint_flags=constraint_flags,
        level_idc=level_idc,
        seq_parameter_set_id=sps_id,
        chroma_format_idc=chroma_format_idc,
        separate_colour_plane=separate_colour_plane,
        bit_depth_luma=bit_depth_luma,
        bit_depth_chroma=bit_depth_chroma,
        frame_mbs_only=frame_mbs_only,
        coded_width=coded_width,
        coded_height=coded_height,
        crop_left=left * crop_unit_x,
        crop_right=right * crop_unit_x,
        crop_top=top * crop_unit_y,
        crop_bottom=bottom * crop_unit_y,
    )
    if info.width <= 0 or info.height <= 0:
        raise MediaError(
            f"SPS: frame cropping {crop} leaves no picture of {coded_width}x{coded_height}"
        )
    return info


@dataclass(frozen=True, slots=True)
class _Avcc:
    length_size: int
    sps: list[bytes]
    pps: list[bytes]


def _read_avcc(avcc: bytes) -> _Avcc:
    if len(avcc) < 7:
        raise MediaError(f"avcC record too short ({len(avcc)} bytes)")
    if avcc[0] != 1:
        raise MediaError(f"unsupported avcC configurationVersion {avcc[0]} (expected 1)")
    length_size = (avcc[4] & 0x03) + 1
    if length_size == 3:
        raise MediaError("avcC lengthSizeMinusOne = 2 is not allowed")
    pos = 5
    sets: list[list[bytes]] = []
    for name, count_mask in (("SPS", 0x1F), ("PPS", 0xFF)):
        if pos >= len(avcc):
            raise MediaError(f"avcC record truncated before the {name} count")
        count = avcc[pos] & count_mask
        pos += 1
        units: list[bytes] = []
        for i in range(count):
            if pos + 2 > len(avcc):
                raise MediaError(f"avcC record truncated in the length of {name} #{i}")
            size = int.from_bytes(avcc[pos : pos + 2], "big")
            pos += 2
            if size == 0:
                raise MediaError(f"avcC {name} #{i} is empty")
            if pos + size > len(avcc):
                raise MediaError(
                    f"avcC record truncated in {name} #{i} ({size} bytes declared, "
                    f"{len(avcc) - pos} present)"
                )
            units.append(bytes(avcc[pos : pos + size]))
            pos += size
        sets.append(units)
    return _Avcc(length_size=length_size, sps=sets[0], pps=sets[1])


def nal_length_size(avcc: bytes) -> int:
    """Size in bytes (1, 2 or 4) of the NAL unit length prefixes announced by an avcC."""
    return _read_avcc(avcc).length_size


def parse_avcc(avcc: bytes) -> VideoConfig:
    """Parse an ``AVCDecoderConfigurationRecord`` into a :class:`VideoConfig`.

    The first SPS gives the picture size (after cropping) and the RFC 6381 codec
    string. Raises :class:`MediaError` if the record or its SPS is malformed.
    """
    record = _read_avcc(avcc)
    if not record.sps:
        raise MediaError("avcC record contains no SPS")
    sps = parse_sps(record.sps[0])
    return VideoConfig(avcc=bytes(avcc), width=sps.width, height=sps.height, codec=sps.codec)


def avcc_nal_units(data: bytes, length_size: int = 4) -> list[bytes]:
    """Split an AVCC access unit (big-endian length-prefixed NAL units) into NAL units."""
    if length_size not in (1, 2, 4):
        raise MediaError(f"invalid NAL length size {length_size} (expected 1, 2 or 4)")
    units: list[bytes] = []
    pos = 0
    end = len(data)
    while pos < end:
        if pos + length_size > end:
            raise MediaError(
                f"AVCC access unit truncated in a NAL length prefix at byte {pos} of {end}"
            )
        size = int.from_bytes(data[pos : pos + length_size], "big")
        pos += length_size
        if size == 0:
            raise MediaError(f"AVCC access unit contains an empty NAL unit at byte {pos}")
        if pos + size > end:
            raise MediaError(
                f"AVCC NAL unit at byte {pos} declares {size} bytes but only {end - pos} remain"
            )
        units.append(bytes(data[pos : pos + size]))
        pos += size
    return units
