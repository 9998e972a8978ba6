"""Fragmented MP4 (ISO/IEC 14496-12) writing and reading.

This module owns tidecast's fMP4 container code:

* a writer for HLS fMP4 / CMAF-style output: :func:`init_segment` builds
  ``ftyp`` + ``moov`` (one ``trak`` per :class:`Track`, ``avc1``/``avcC`` or
  ``mp4a``/``esds`` sample entries, empty sample tables and ``mvex``/``trex``);
  :func:`media_segment` builds ``styp`` + one ``moof`` (one ``traf`` per
  :class:`Fragment`, with ``tfhd`` default-base-is-moof, a version 1 ``tfdt`` and
  a version 1 ``trun`` carrying every sample's duration, size, flags and signed
  composition offset) + one ``mdat``;
* a small reader used by tests and by the transcoder when it re-stamps ffmpeg
  output: :func:`iter_boxes`, :func:`read_base_decode_times`,
  :func:`rewrite_base_decode_times`, :func:`read_track_timescales`,
  :func:`read_trex_default_durations` and :func:`segment_durations`.

Everything is pure (bytes in, bytes out). Malformed containers raise
:class:`MediaError`; invalid arguments to the writer raise :class:`MediaError`
too (it is a :class:`ValueError`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from tidecast.media.errors import MediaError
from tidecast.media.frames import AudioConfig, TrackKind, VideoConfig

__all__ = [
    "AUDIO_TRACK",
    "VIDEO_TIMESCALE",
    "VIDEO_TRACK",
    "Box",
    "Fragment",
    "Sample",
    "TimedSample",
    "Track",
    "init_segment",
    "iter_boxes",
    "media_segment",
    "read_base_decode_times",
    "read_samples",
    "read_track_timescales",
    "read_trex_default_durations",
    "rewrite_base_decode_times",
    "segment_durations",
    "segment_type",
]

# track ids of tidecast's CMAF segments: one video and one audio track at most
VIDEO_TRACK = 1
AUDIO_TRACK = 2
VIDEO_TIMESCALE = 90000

_U16 = 0xFFFF
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_S32_MIN = -(1 << 31)
_S32_MAX = (1 << 31) - 1

# Sample flags (ISO/IEC 14496-12 §8.8.3.1).
SYNC_SAMPLE_FLAGS = 0x02000000  # sample_depends_on = 2 (depends on no other sample)
NON_SYNC_SAMPLE_FLAGS = 0x01010000  # sample_depends_on = 1, sample_is_non_sync_sample = 1

# tfhd flags
_TFHD_BASE_DATA_OFFSET = 0x000001
_TFHD_SAMPLE_DESCRIPTION_INDEX = 0x000002
_TFHD_DEFAULT_DURATION = 0x000008
_TFHD_DEFAULT_SIZE = 0x000010
_TFHD_DEFAULT_FLAGS = 0x000020
_TFHD_DEFAULT_BASE_IS_MOOF = 0x020000

# trun flags
_TRUN_DATA_OFFSET = 0x000001
_TRUN_FIRST_SAMPLE_FLAGS = 0x000004
_TRUN_DURATION = 0x000100
_TRUN_SIZE = 0x000200
_TRUN_FLAGS = 0x000400
_TRUN_CTS = 0x000800

_UNITY_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
_LANGUAGE_UND = 0x55C4  # ISO-639-2 "und", packed 5 bits per letter

FTYP_MAJOR_BRAND = b"iso6"
FTYP_COMPATIBLE_BRANDS = (b"iso6", b"cmfc", b"mp41", b"dash")
STYP_MAJOR_BRAND = b"msdh"
STYP_COMPATIBLE_BRANDS = (b"msdh", b"iso6")


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True, slots=True)
class Track:
    """One track of an fMP4 presentation."""

    track_id: int
    config: VideoConfig | AudioConfig
    timescale: int  # video: 90000; audio: the sample rate

    @classmethod
    def for_config(cls, track_id: int, config: VideoConfig | AudioConfig) -> Track:
        """A track with tidecast's default timescale for its kind."""
        if isinstance(config, VideoConfig):
            return cls(track_id, config, VIDEO_TIMESCALE)
        return cls(track_id, config, config.sample_rate)

    @property
    def kind(self) -> TrackKind:
        return TrackKind.VIDEO if isinstance(self.config, VideoConfig) else TrackKind.AUDIO


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample (access unit) of a fragment; times are in the track's timescale."""

    data: bytes
    duration: int
    cts_offset: int = 0  # presentation time - decode time (signed)
    keyframe: bool = True


@dataclass(frozen=True, slots=True)
class Fragment:
    """A run of consecutive samples of one track starting at ``base_decode_time``."""

    track_id: int
    base_decode_time: int
    samples: Sequence[Sample]


@dataclass(frozen=True, slots=True)
class Box:
    """Location of one box inside a buffer."""

    type: str
    start: int
    size: int
    header_size: int  # 8, 16 with a 64-bit largesize, +16 for a 'uuid' usertype

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def payload_start(self) -> int:
        return self.start + self.header_size


# --------------------------------------------------------------------------- writer helpers


def _box(box_type: bytes, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    size = 8 + len(payload)
    if size > _U32:
        return struct.pack(">I4sQ", 1, box_type, size + 8) + payload
    return struct.pack(">I4s", size, box_type) + payload


def _full_box(box_type: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return _box(box_type, struct.pack(">I", (version << 24) | flags), *parts)


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise MediaError(f"{name} = {value} is out of range [{low}, {high}]")


def _descriptor(tag: int, payload: bytes) -> bytes:
    """An MPEG-4 descriptor with an expandable (7 bits per byte) length."""
    size = len(payload)
    length = [size & 0x7F]
    size >>= 7
    while size:
        length.append(0x80 | (size & 0x7F))
        size >>= 7
    if len(length) > 4:
        raise MediaError("MPEG-4 descriptor payload too large")
    return bytes([tag, *reversed(length)]) + payload


def _esds(track_id: int, asc: bytes) -> bytes:
    decoder_config = _descriptor(
        0x04,
        struct.pack(">BB", 0x40, (0x05 << 2) | 1)  # Audio ISO/IEC 14496-3, AudioStream
        + (0).to_bytes(3, "big")  # bufferSizeDB
        + struct.pack(">II", 0, 0)  # maxBitrate, avgBitrate (unknown)
        + _descriptor(0x05, asc),
    )
    sl_config = _descriptor(0x06, b"\x02")
    es = _descriptor(0x03, struct.pack(">HB", track_id & _U16, 0) + decoder_config + sl_config)
    return _full_box(b"esds", 0, 0, es)


def _sample_entry(track: Track) -> bytes:
    config = track.config
    if isinstance(config, VideoConfig):
        _check_range("video width", config.width, 1, _U16)
        _check_range("video height", config.height, 1, _U16)
        return _box(
            b"avc1",
            bytes(6),
            struct.pack(">H", 1),  # data_reference_index
            bytes(16),  # pre_defined, reserved, pre_defined[3]
            struct.pack(">HH", config.width, config.height),
            struct.pack(">II", 0x00480000, 0x00480000),  # 72 dpi
            bytes(4),
            struct.pack(">H", 1),  # frame_count
            bytes(32),  # compressorname
            struct.pack(">Hh", 0x0018, -1),  # depth, pre_defined
            _box(b"avcC", config.avcc),
        )
    _check_range("audio channels", config.channels, 1, _U16)
    rate = config.sample_rate if config.sample_rate <= _U16 else 0
    return _box(
        b"mp4a",
        bytes(6),
        struct.pack(">H", 1),
        bytes(8),
        struct.pack(">HHHH", config.channels, 16, 0, 0),
        struct.pack(">I", rate << 16),
        _esds(track.track_id, config.asc),
    )


def _trak(track: Track) -> bytes:
    video = isinstance(track.config, VideoConfig)
    width, height = (
        (track.config.width, track.config.height)
        if isinstance(track.config, VideoConfig)
        else (0, 0)
    )
    tkhd = _full_box(
        b"tkhd",
        0,
        0x000003,  # track_enabled | track_in_movie
        struct.pack(">IIIII", 0, 0, track.track_id, 0, 0),
        bytes(8),
        struct.pack(">hhhH", 0, 0, 0 if video else 0x0100, 0),
        _UNITY_MATRIX,
        struct.pack(">II", width << 16, height << 16),
    )
    mdhd = _full_box(
        b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, track.timescale, 0, _LANGUAGE_UND, 0)
    )
    handler, name = (b"vide", b"VideoHandler") if video else (b"soun", b"SoundHandler")
    hdlr = _full_box(b"hdlr", 0, 0, bytes(4), handler, bytes(12), name + b"\x00")
    media_header = (
        _full_box(b"vmhd", 0, 1, bytes(8)) if video else _full_box(b"smhd", 0, 0, bytes(4))
    )
    dinf = _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1)))
    stbl = _box(
        b"stbl",
        _full_box(b"stsd", 0, 0, struct.pack(">I", 1), _sample_entry(track)),
        _full_box(b"stts", 0, 0, struct.pack(">I", 0)),
        _full_box(b"stsc", 0, 0, struct.pack(">I", 0)),
        _full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)),
        _full_box(b"stco", 0, 0, struct.pack(">I", 0)),
    )
    minf = _box(b"minf", media_header, dinf, stbl)
    return _box(b"trak", tkhd, _box(b"mdia", mdhd, hdlr, minf))


def _brands(box_type: bytes, major: bytes, compatible: Sequence[bytes]) -> bytes:
    return _box(box_type, major, struct.pack(">I", 0), *compatible)


def init_segment(tracks: Sequence[Track]) -> bytes:
    """Build an fMP4 initialization segment (``ftyp`` + ``moov``) for ``tracks``."""
    if not tracks:
        raise MediaError("an init segment needs at least one track")
    ids = [t.track_id for t in tracks]
    if len(set(ids)) != len(ids):
        raise MediaError(f"duplicate track ids in {ids}")
    for track in tracks:
        _check_range("track_id", track.track_id, 1, _U32 - 1)
        _check_range(f"timescale of track {track.track_id}", track.timescale, 1, _U32)
    mvhd = _full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, 1000, 0),  # creation, modification, timescale, duration
        struct.pack(">IH", 0x00010000, 0x0100),  # rate 1.0, volume 1.0
        bytes(10),
        _UNITY_MATRIX,
        bytes(24),
        struct.pack(">I", max(ids) + 1),  # next_track_ID
    )
    trex = [_full_box(b"trex", 0, 0, struct.pack(">IIIII", t.track_id, 1, 0, 0, 0)) for t in tracks]
    moov = _box(b"moov", mvhd, *(_trak(t) for t in tracks), _box(b"mvex", *trex))
    return _brands(b"ftyp", FTYP_MAJOR_BRAND, FTYP_COMPATIBLE_BRANDS) + moov


def _traf(fragment: Fragment, data_offset: int) -> bytes:
    tfhd = _full_box(b"tfhd", 0, _TFHD_DEFAULT_BASE_IS_MOOF, struct.pack(">I", fragment.track_id))
    tfdt = _full_box(b"tfdt", 1, 0, struct.pack(">Q", fragment.base_decode_time))
    entries = b"".join(
        struct.pack(
            ">IIIi",
            s.duration,
            len(s.data),
            SYNC_SAMPLE_FLAGS if s.keyframe else NON_SYNC_SAMPLE_FLAGS,
            s.cts_offset,
        )
        for s in fragment.samples
    )
    trun = _full_box(
        b"trun",
        1,
        _TRUN_DATA_OFFSET | _TRUN_DURATION | _TRUN_SIZE | _TRUN_FLAGS | _TRUN_CTS,
        struct.pack(">Ii", len(fragment.samples), data_offset),
        entries,
    )
    return _box(b"traf", tfhd, tfdt, trun)


def _validate_fragments(sequence_number: int, fragments: Sequence[Fragment]) -> None:
    _check_range("sequence_number", sequence_number, 0, _U32)
    if not fragments:
        raise MediaError("a media segment needs at least one fragment")
    ids = [f.track_id for f in fragments]
    if len(set(ids)) != len(ids):
        raise MediaError(f"more than one fragment for the same track in {ids}")
    for fragment in fragments:
        tid = fragment.track_id
        _check_range("track_id", tid, 1, _U32 - 1)
        _check_range(f"base_decode_time of track {tid}", fragment.base_decode_time, 0, _U64)
        if not fragment.samples:
            raise MediaError(f"fragment for track {tid} has no samples")
        _check_range(f"sample count of track {tid}", len(fragment.samples), 1, _U32)
        for i, sample in enumerate(fragment.samples):
            _check_range(f"duration of sample {i} of track {tid}", sample.duration, 0, _U32)
            _check_range(
                f"cts_offset of sample {i} of track {tid}", sample.cts_offset, _S32_MIN, _S32_MAX
            )
            _check_range(f"size of sample {i} of track {tid}", len(sample.data), 0, _U32)


def media_segment(sequence_number: int, fragments: Sequence[Fragment], *, styp: bool = True) -> bytes:
    """Build an fMP4 media segment: ``styp`` + one ``moof`` + one ``mdat``.

    The ``mdat`` holds the fragments' samples in order (all of the first fragment,
    then all of the second, ...); each ``trun`` data offset is relative to the start
    of the ``moof`` (``tfhd`` default-base-is-moof). ``styp=False`` leaves out the
    ``styp``: a CMAF chunk (an LL-HLS part), which a segment concatenates.
    """
    _validate_fragments(sequence_number, fragments)
    mfhd = _full_box(b"mfhd", 0, 0, struct.pack(">I", sequence_number))
    # The moof size does not depend on the offsets, so measure it with placeholders.
    moof_size = len(_box(b"moof", mfhd, *(_traf(f, 0) for f in fragments)))
    payload_size = sum(len(s.data) for f in fragments for s in f.samples)
    mdat_header_size = 8 if payload_size + 8 <= _U32 else 16
    offset = moof_size + mdat_header_size
    trafs = []
    for fragment in fragments:
        _check_range(f"data offset of track {fragment.track_id}", offset, 0, _S32_MAX)
        trafs.append(_traf(fragment, offset))
        offset += sum(len(s.data) for s in fragment.samples)
    moof = _box(b"moof", mfhd, *trafs)
    if len(moof) != moof_size:  # pragma: no cover - internal invariant
        raise AssertionError("moof size changed while patching data offsets")
    mdat = _box(b"mdat", *(s.data for f in fragments for s in f.samples))
    if not styp:
        return moof + mdat
    return _brands(b"styp", STYP_MAJOR_BRAND, STYP_COMPATIBLE_BRANDS) + moof + mdat


def segment_type() -> bytes:
    """The ``styp`` box tidecast's media segments start with."""
    return _brands(b"styp", STYP_MAJOR_BRAND, STYP_COMPATIBLE_BRANDS)


# --------------------------------------------------------------------------- reader


def iter_boxes(data: bytes, offset: int = 0, end: int | None = None) -> Iterator[Box]:
    """Yield the boxes laid end to end in ``data[offset:end]``.

    Handles 64-bit ``largesize``, size 0 ("to the end") and ``uuid`` usertypes.
    Raises :class:`MediaError` when a header or box is truncated or a size is invalid.
    """
    limit = len(data) if end is None else end
    if not 0 <= offset <= limit <= len(data):
        raise MediaError(f"invalid box range [{offset}, {limit}) in {len(data)} bytes")
    pos = offset
    while pos < limit:
        if limit - pos < 8:
            raise MediaError(f"truncated box header at byte {pos} ({limit - pos} bytes left)")
        size, raw_type = struct.unpack_from(">I4s", data, pos)
        box_type = raw_type.decode("latin-1")
        header = 8
        if size == 1:
            if limit - pos < 16:
                raise MediaError(f"truncated 64-bit size of box '{box_type}' at byte {pos}")
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = limit - pos
        if box_type == "uuid":
            header += 16
        if size < header:
            raise MediaError(f"box '{box_type}' at byte {pos} has invalid size {size}")
        if pos + size > limit:
            raise MediaError(
                f"box '{box_type}' at byte {pos} is truncated: it declares {size} bytes "
                f"but only {limit - pos} remain"
            )
        yield Box(box_type, pos, size, header)
        pos += size


def _children(data: bytes, parent: Box) -> list[Box]:
    return list(iter_boxes(data, parent.payload_start, parent.end))


def _child(data: bytes, parent: Box, box_type: str) -> Box | None:
    return next((b for b in _children(data, parent) if b.type == box_type), None)


def _require(data: bytes, parent: Box, box_type: str) -> Box:
    box = _child(data, parent, box_type)
    if box is None:
        raise MediaError(f"'{parent.type}' box at byte {parent.start} has no '{box_type}' box")
    return box


def _unpack(fmt: str, data: bytes, pos: int, box: Box) -> tuple[int, ...]:
    if pos + struct.calcsize(fmt) > box.end:
        raise MediaError(f"'{box.type}' box at byte {box.start} is too short")
    return struct.unpack_from(fmt, data, pos)


def _full_header(data: bytes, box: Box) -> tuple[int, int]:
    (word,) = _unpack(">I", data, box.payload_start, box)
    return word >> 24, word & 0xFFFFFF


@dataclass(frozen=True, slots=True)
class _Tfhd:
    track_id: int
    flags: int
    base_data_offset: int | None
    base_data_offset_pos: int | None
    default_sample_duration: int | None


@dataclass(frozen=True, slots=True)
class _Trun:
    box: Box
    sample_count: int
    data_offset: int | None
    data_offset_pos: int | None
    durations: list[int] | None  # None when the trun carries no per-sample durations
    first_cts: int | None = None  # composition offset of the first sample, if carried


@dataclass(frozen=True, slots=True)
class _Traf:
    box: Box
    tfhd: _Tfhd
    tfdt: Box | None
    tfdt_version: int
    base_decode_time: int | None
    truns: list[_Trun]


def _parse_tfhd(data: bytes, box: Box) -> _Tfhd:
    _, flags = _full_header(data, box)
    pos = box.payload_start + 4
    (track_id,) = _unpack(">I", data, pos, box)
    pos += 4
    base: int | None = None
    base_pos: int | None = None
    duration: int | None = None
    if flags & _TFHD_BASE_DATA_OFFSET:
        base_pos = pos
        (base,) = _unpack(">Q", data, pos, box)
        pos += 8
    if flags & _TFHD_SAMPLE_DESCRIPTION_INDEX:
        pos += 4
    if flags & _TFHD_DEFAULT_DURATION:
        (duration,) = _unpack(">I", data, pos, box)
        pos += 4
    for flag in (_TFHD_DEFAULT_SIZE, _TFHD_DEFAULT_FLAGS):
        if flags & flag:
            pos += 4
    if pos > box.end:
        raise MediaError(f"'tfhd' box at byte {box.start} is too short for its flags {flags:#x}")
    return _Tfhd(track_id, flags, base, base_pos, duration)


def _parse_trun(data: bytes, box: Box) -> _Trun:
    version, flags = _full_header(data, box)  # version only changes the sign of cts offsets
    pos = box.payload_start + 4
    (count,) = _unpack(">I", data, pos, box)
    pos += 4
    offset: int | None = None
    offset_pos: int | None = None
    if flags & _TRUN_DATA_OFFSET:
        offset_pos = pos
        (offset,) = _unpack(">i", data, pos, box)
        pos += 4
    if flags & _TRUN_FIRST_SAMPLE_FLAGS:
        pos += 4
    fields = [f for f in (_TRUN_DURATION, _TRUN_SIZE, _TRUN_FLAGS, _TRUN_CTS) if flags & f]
    entry = 4 * len(fields)
    if pos + entry * count > box.end:
        raise MediaError(
            f"'trun' box at byte {box.start} declares {count} samples but is too short for them"
        )
    durations: list[int] | None = None
    if flags & _TRUN_DURATION:
        durations = [struct.unpack_from(">I", data, pos + i * entry)[0] for i in range(count)]
    first_cts: int | None = None
    if flags & _TRUN_CTS and count:
        fmt = ">i" if version else ">I"
        (first_cts,) = struct.unpack_from(fmt, data, pos + 4 * fields.index(_TRUN_CTS))
    return _Trun(box, count, offset, offset_pos, durations, first_cts)


def _parse_traf(data: bytes, box: Box) -> _Traf:
    tfhd: _Tfhd | None = None
    tfdt: Box | None = None
    tfdt_version = 0
    base_time: int | None = None
    truns: list[_Trun] = []
    for child in _children(data, box):
        if child.type == "tfhd":
            tfhd = _parse_tfhd(data, child)
        elif child.type == "tfdt":
            tfdt = child
            tfdt_version, _ = _full_header(data, child)
            if tfdt_version == 1:
                (base_time,) = _unpack(">Q", data, child.payload_start + 4, child)
            elif tfdt_version == 0:
                (base_time,) = _unpack(">I", data, child.payload_start + 4, child)
            else:
                raise MediaError(f"unsupported 'tfdt' version {tfdt_version} at byte {child.start}")
        elif child.type == "trun":
            truns.append(_parse_trun(data, child))
    if tfhd is None:
        raise MediaError(f"'traf' box at byte {box.start} has no 'tfhd' box")
    return _Traf(box, tfhd, tfdt, tfdt_version, base_time, truns)


def _moofs(data: bytes) -> list[tuple[Box, list[_Traf]]]:
    moofs = [
        (box, [_parse_traf(data, b) for b in _children(data, box) if b.type == "traf"])
        for box in iter_boxes(data)
        if box.type == "moof"
    ]
    if not moofs:
        raise MediaError("no 'moof' box in segment")
    return moofs


def _first_decode_times(moofs: list[tuple[Box, list[_Traf]]]) -> dict[int, int]:
    times: dict[int, int] = {}
    for _, trafs in moofs:
        for traf in trafs:
            if traf.base_decode_time is None:
                raise MediaError(
                    f"'traf' of track {traf.tfhd.track_id} at byte {traf.box.start} has no 'tfdt'"
                )
            times.setdefault(traf.tfhd.track_id, traf.base_decode_time)
    return times


def read_base_decode_times(segment: bytes) -> dict[int, int]:
    """Map each track id to the ``tfdt`` base media decode time of its first ``traf``.

    ``segment`` may hold several ``moof`` boxes (e.g. a whole fragmented file); the
    earliest fragment of each track (in file order) is reported.
    """
    return _first_decode_times(_moofs(segment))


def read_first_composition_offsets(segment: bytes) -> dict[int, int]:
    """Map each track id to the composition offset of its first sample (0 if not carried)."""
    out: dict[int, int] = {}
    for _, trafs in _moofs(segment):
        for traf in trafs:
            if traf.tfhd.track_id not in out and traf.truns:
                out[traf.tfhd.track_id] = traf.truns[0].first_cts or 0
    return out


def read_track_timescales(init: bytes) -> dict[int, int]:
    """Map each track id of an init segment (or whole file) to its ``mdhd`` timescale."""
    moov = next((b for b in iter_boxes(init) if b.type == "moov"), None)
    if moov is None:
        raise MediaError("no 'moov' box in init segment")
    timescales: dict[int, int] = {}
    for trak in (b for b in _children(init, moov) if b.type == "trak"):
        tkhd = _require(init, trak, "tkhd")
        version, _ = _full_header(init, tkhd)
        id_pos = tkhd.payload_start + 4 + (16 if version == 1 else 8)
        (track_id,) = _unpack(">I", init, id_pos, tkhd)
        mdhd = _require(init, _require(init, trak, "mdia"), "mdhd")
        version, _ = _full_header(init, mdhd)
        ts_pos = mdhd.payload_start + 4 + (16 if version == 1 else 8)
        (timescale,) = _unpack(">I", init, ts_pos, mdhd)
        if timescale == 0:
            raise MediaError(f"track {track_id} has timescale 0")
        timescales[track_id] = timescale
    if not timescales:
        raise MediaError("'moov' box has no tracks")
    return timescales


def read_trex_default_durations(init: bytes) -> dict[int, int]:
    """Map each track id to its ``trex`` default_sample_duration (from ``moov/mvex``)."""
    moov = next((b for b in iter_boxes(init) if b.type == "moov"), None)
    if moov is None:
        raise MediaError("no 'moov' box in init segment")
    mvex = _child(init, moov, "mvex")
    if mvex is None:
        return {}
    defaults: dict[int, int] = {}
    for trex in (b for b in _children(init, mvex) if b.type == "trex"):
        track_id, _, duration = _unpack(">III", init, trex.payload_start + 4, trex)
        defaults[track_id] = duration
    return defaults


def segment_durations(
    segment: bytes, default_durations: dict[int, int] | None = None
) -> dict[int, int]:
    """Sum the sample durations of every track in a segment (in track timescale units).

    Per-sample ``trun`` durations are used when present, else the ``tfhd``
    default_sample_duration, else ``default_durations[track_id]`` (typically from
    :func:`read_trex_default_durations`); if none applies, :class:`MediaError`.
    """
    totals: dict[int, int] = {}
    for _, trafs in _moofs(segment):
        for traf in trafs:
            track_id = traf.tfhd.track_id
            total = totals.get(track_id, 0)
            for trun in traf.truns:
                if trun.durations is not None:
                    total += sum(trun.durations)
                    continue
                default = traf.tfhd.default_sample_duration
                if default is None and default_durations is not None:
                    default = default_durations.get(track_id)
                if default is None:
                    raise MediaError(
                        f"track {track_id}: 'trun' at byte {trun.box.start} has no sample "
                        "durations and no default duration is known"
                    )
                total += default * trun.sample_count
            totals[track_id] = total
    return totals


@dataclass(frozen=True, slots=True)
class TimedSample:
    """A sample read back from a fragment: its decode time and everything ``Sample`` has."""

    dts: int
    duration: int
    cts_offset: int
    keyframe: bool
    data: bytes

    @property
    def pts(self) -> int:
        return self.dts + self.cts_offset

    def sample(self) -> Sample:
        return Sample(self.data, self.duration, self.cts_offset, self.keyframe)


_SAMPLE_IS_NON_SYNC = 0x00010000


def read_samples(segment: bytes) -> dict[int, list[TimedSample]]:
    """Every sample of every track of ``segment`` (one or more ``moof`` + ``mdat``), in
    decode order, with its decode time, duration, composition offset, sync flag and
    bytes. Sample defaults come from ``tfhd`` (``trex`` defaults are not known here: a
    fragment that relies on them raises :class:`MediaError`)."""
    out: dict[int, list[TimedSample]] = {}
    for moof, trafs in _moofs(segment):
        for traf in trafs:
            if traf.base_decode_time is None:
                raise MediaError(f"'traf' at byte {traf.box.start} has no 'tfdt'")
            track = out.setdefault(traf.tfhd.track_id, [])
            dts = traf.base_decode_time
            base = traf.tfhd.base_data_offset
            if base is None:
                base = moof.start
            defaults = _tfhd_sample_defaults(segment, traf.tfhd, traf.box)
            for trun in traf.truns:
                dts = _read_trun_samples(segment, trun, base, dts, defaults, track)
    return out


def _tfhd_sample_defaults(data: bytes, tfhd: _Tfhd, traf: Box) -> tuple[int | None, int | None, int | None]:
    """(default duration, size, flags) of a ``tfhd``."""
    box = next(b for b in _children(data, traf) if b.type == "tfhd")
    pos = box.payload_start + 8
    if tfhd.flags & _TFHD_BASE_DATA_OFFSET:
        pos += 8
    if tfhd.flags & _TFHD_SAMPLE_DESCRIPTION_INDEX:
        pos += 4
    values: list[int | None] = []
    for flag in (_TFHD_DEFAULT_DURATION, _TFHD_DEFAULT_SIZE, _TFHD_DEFAULT_FLAGS):
        if tfhd.flags & flag:
            (v,) = _unpack(">I", data, pos, box)
            values.append(v)
            pos += 4
        else:
            values.append(None)
    return values[0], values[1], values[2]


def _read_trun_samples(
    data: bytes, trun: _Trun, base: int, dts: int,
    defaults: tuple[int | None, int | None, int | None], out: list[TimedSample],
) -> int:  # fmt: skip
    box = trun.box
    version, flags = _full_header(data, box)
    pos = box.payload_start + 8
    first_flags: int | None = None
    if flags & _TRUN_DATA_OFFSET:
        pos += 4
    if flags & _TRUN_FIRST_SAMPLE_FLAGS:
        (first_flags,) = _unpack(">I", data, pos, box)
        pos += 4
    offset = base + (trun.data_offset or 0)
    d_duration, d_size, d_flags = defaults
    for i in range(trun.sample_count):
        duration, size, sflags, cts = d_duration, d_size, d_flags, 0
        if flags & _TRUN_DURATION:
            (duration,) = _unpack(">I", data, pos, box)
            pos += 4
        if flags & _TRUN_SIZE:
            (size,) = _unpack(">I", data, pos, box)
            pos += 4
        if flags & _TRUN_FLAGS:
            (sflags,) = _unpack(">I", data, pos, box)
            pos += 4
        if flags & _TRUN_CTS:
            (cts,) = _unpack(">i" if version else ">I", data, pos, box)
            pos += 4
        if i == 0 and first_flags is not None:
            sflags = first_flags
        if duration is None or size is None:
            raise MediaError(f"'trun' at byte {box.start}: sample {i} has no duration or size")
        if offset < 0 or offset + size > len(data):
            raise MediaError(f"'trun' at byte {box.start}: sample {i} lies outside the data")
        keyframe = not (sflags or 0) & _SAMPLE_IS_NON_SYNC
        out.append(TimedSample(dts, duration, cts, keyframe, bytes(data[offset : offset + size])))
        offset += size
        dts += duration
    return dts


# --------------------------------------------------------------------------- rewriting


@dataclass(frozen=True, slots=True)
class _Growth:
    start: int  # original byte range of a rebuilt or dropped top-level box
    end: int
    delta: int  # new size - old size


def _shift_at(events: list[_Growth], position: int) -> int:
    """How far the byte at original ``position`` moves (boxes ending before it changed)."""
    return sum(g.delta for g in events if g.end <= position)


def _growth_within(events: list[_Growth], start: int, end: int) -> int:
    return sum(g.delta for g in events if g.start >= start and g.end <= end)


def _header_bytes(box_type: str, payload_len: int, large: bool) -> bytes:
    if large or payload_len + 8 > _U32:
        return struct.pack(">I4sQ", 1, box_type.encode("latin-1"), payload_len + 16)
    return struct.pack(">I4s", payload_len + 8, box_type.encode("latin-1"))


class _Rebuilt:
    """A rebuilt box: new bytes plus where copied original ranges landed."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.copied: list[tuple[int, int, int]] = []  # (orig_start, orig_end, new_offset)

    def copy(self, source: bytes, start: int, end: int) -> None:
        self.copied.append((start, end, len(self.data)))
        self.data += source[start:end]

    def locate(self, original_pos: int) -> int:
        for start, end, new in self.copied:
            if start <= original_pos < end:
                return new + original_pos - start
        raise AssertionError(f"byte {original_pos} was not copied")  # pragma: no cover


def _rebuild_moof(data: bytes, moof: Box, trafs: list[_Traf], deltas: dict[int, int]) -> _Rebuilt:
    by_start = {t.box.start: t for t in trafs}
    body = _Rebuilt()
    for child in _children(data, moof):
        traf = by_start.get(child.start)
        if traf is None:
            body.copy(data, child.start, child.end)
            continue
        traf_body = _Rebuilt()
        for part in _children(data, child):
            if traf.tfdt is not None and part.start == traf.tfdt.start:
                assert traf.base_decode_time is not None
                new_time = traf.base_decode_time + deltas.get(traf.tfhd.track_id, 0)
                if not 0 <= new_time <= _U64:
                    raise MediaError(
                        f"new tfdt {new_time} of track {traf.tfhd.track_id} is out of range"
                    )
                if traf.tfdt_version == 0 and new_time <= _U32:
                    traf_body.data += _full_box(b"tfdt", 0, 0, struct.pack(">I", new_time))
                else:
                    traf_body.data += _full_box(b"tfdt", 1, 0, struct.pack(">Q", new_time))
            else:
                traf_body.copy(data, part.start, part.end)
        header = _header_bytes("traf", len(traf_body.data), child.header_size == 16)
        base = len(body.data) + len(header)
        body.data += header + traf_body.data
        body.copied += [(s, e, base + n) for s, e, n in traf_body.copied]
    out = _Rebuilt()
    header = _header_bytes("moof", len(body.data), moof.header_size == 16)
    out.data += header + body.data
    out.copied = [(s, e, len(header) + n) for s, e, n in body.copied]
    return out


@dataclass(frozen=True, slots=True)
class _Sidx:
    box: Box
    version: int
    flags: int
    reference_id: int
    timescale: int
    earliest_presentation_time: int
    first_offset: int
    references: list[tuple[int, int, int, int]]  # (type, size, duration, sap word)


def _parse_sidx(data: bytes, box: Box) -> _Sidx:
    version, flags = _full_header(data, box)
    pos = box.payload_start + 4
    reference_id, timescale = _unpack(">II", data, pos, box)
    pos += 8
    if version == 0:
        ept, first_offset = _unpack(">II", data, pos, box)
        pos += 8
    elif version == 1:
        ept, first_offset = _unpack(">QQ", data, pos, box)
        pos += 16
    else:
        raise MediaError(f"unsupported 'sidx' version {version} at byte {box.start}")
    _, count = _unpack(">HH", data, pos, box)
    pos += 4
    if pos + 12 * count > box.end:
        raise MediaError(f"'sidx' box at byte {box.start} is too short for {count} references")
    references = []
    for i in range(count):
        word, duration, sap = struct.unpack_from(">III", data, pos + 12 * i)
        references.append((word >> 31, word & 0x7FFFFFFF, duration, sap))
    return _Sidx(box, version, flags, reference_id, timescale, ept, first_offset, references)


def _rebuild_sidx(data: bytes, sidx: _Sidx, deltas: dict[int, int], events: list[_Growth]) -> bytes:
    ept = sidx.earliest_presentation_time + deltas.get(sidx.reference_id, 0)
    if not 0 <= ept <= _U64:
        raise MediaError(f"sidx earliest_presentation_time {ept} is out of range")
    anchor = sidx.box.end
    first = sidx.first_offset + _growth_within(events, anchor, anchor + sidx.first_offset)
    position = anchor + sidx.first_offset
    refs = bytearray()
    for ref_type, size, duration, sap in sidx.references:
        new_size = size + _growth_within(events, position, position + size)
        _check_range("sidx referenced_size", new_size, 0, 0x7FFFFFFF)
        refs += struct.pack(">III", (ref_type << 31) | new_size, duration, sap)
        position += size
    version = 1 if sidx.version == 1 or ept > _U32 else 0
    if version == 0 and first > _U32:
        raise MediaError("sidx first_offset no longer fits in a version 0 'sidx'")
    times = struct.pack(">QQ", ept, first) if version else struct.pack(">II", ept, first)
    payload = (
        struct.pack(">III", (version << 24) | sidx.flags, sidx.reference_id, sidx.timescale)
        + times
        + struct.pack(">HH", 0, len(sidx.references))
        + refs
    )
    return _header_bytes("sidx", len(payload), sidx.box.header_size == 16) + payload


def rewrite_base_decode_times(segment: bytes, new_times: dict[int, int]) -> bytes:
    """Return ``segment`` with the ``tfdt`` of the tracks in ``new_times`` replaced.

    ``new_times[track_id]`` becomes the base decode time of that track's first
    ``traf``; later ``traf`` boxes of the same track (when the segment holds several
    ``moof`` boxes) are shifted by the same amount. Tracks not in ``new_times`` are
    left alone; a track id absent from the segment raises :class:`MediaError`.

    A version 0 ``tfdt`` stays version 0 when the new time fits in 32 bits and is
    upgraded to version 1 otherwise; box sizes, ``trun`` data offsets, ``tfhd``
    base data offsets and ``sidx`` references/earliest presentation times are
    fixed up accordingly. An ``mfra`` random-access index (only found at the end
    of whole files) is dropped because its times and offsets would be stale.
    """
    moofs = _moofs(segment)
    first = _first_decode_times(moofs)
    for track_id, value in new_times.items():
        if track_id not in first:
            raise MediaError(f"track {track_id} has no fragment in the segment")
        _check_range(f"new base decode time of track {track_id}", value, 0, _U64)
    deltas = {track_id: value - first[track_id] for track_id, value in new_times.items()}

    top = list(iter_boxes(segment))
    sidxs = {b.start: _parse_sidx(segment, b) for b in top if b.type == "sidx"}
    rebuilt_moofs = {
        moof.start: _rebuild_moof(segment, moof, trafs, deltas) for moof, trafs in moofs
    }
    events: list[_Growth] = []
    for box in top:
        if box.start in rebuilt_moofs:
            events.append(
                _Growth(box.start, box.end, len(rebuilt_moofs[box.start].data) - box.size)
            )
        elif box.start in sidxs:
            # Field widths do not depend on the growth events, only on the new version.
            new_size = len(_rebuild_sidx(segment, sidxs[box.start], deltas, []))
            events.append(_Growth(box.start, box.end, new_size - box.size))
        elif box.type == "mfra":
            events.append(_Growth(box.start, box.end, -box.size))

    for moof, trafs in moofs:
        blob = rebuilt_moofs[moof.start]
        for index, traf in enumerate(trafs):
            tfhd = traf.tfhd
            if tfhd.base_data_offset is not None and tfhd.base_data_offset_pos is not None:
                base = tfhd.base_data_offset
                new_base = base + _shift_at(events, base)
                _check_range("tfhd base_data_offset", new_base, 0, _U64)
                struct.pack_into(">Q", blob.data, blob.locate(tfhd.base_data_offset_pos), new_base)
            elif tfhd.flags & _TFHD_DEFAULT_BASE_IS_MOOF or index == 0:
                base = moof.start
            else:
                continue  # relative to the previous traf's data, which moves with it
            for trun in traf.truns:
                if trun.data_offset is None or trun.data_offset_pos is None:
                    continue
                target = base + trun.data_offset
                new_offset = trun.data_offset + _shift_at(events, target) - _shift_at(events, base)
                _check_range("trun data_offset", new_offset, _S32_MIN, _S32_MAX)
                struct.pack_into(">i", blob.data, blob.locate(trun.data_offset_pos), new_offset)

    out = bytearray()
    for box in top:
        if box.start in rebuilt_moofs:
            out += rebuilt_moofs[box.start].data
        elif box.start in sidxs:
            out += _rebuild_sidx(segment, sidxs[box.start], deltas, events)
        elif box.type != "mfra":
            out += segment[box.start : box.end]
    return bytes(out)
