"""Tests for tidecast.media.aac: AudioSpecificConfig parsing.

Hand-built configs (with a small bit writer) cover the syntax corners; real configs
from ffmpeg's AAC encoder are compared against PyAV.
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

from tidecast.media.aac import parse_asc, parse_asc_info
from tidecast.media.errors import MediaError

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


class Bits:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def u(self, n: int, value: int) -> Bits:
        assert 0 <= value < (1 << n)
        self.bits += [(value >> i) & 1 for i in reversed(range(n))]
        return self

    def aot(self, value: int) -> Bits:
        return self.u(5, value) if value < 31 else self.u(5, 31).u(6, value - 32)

    def freq(self, index: int, explicit: int = 0) -> Bits:
        return self.u(4, index).u(24, explicit) if index == 15 else self.u(4, index)

    def ga(self, frame_length_flag: int = 0) -> Bits:
        return self.u(1, frame_length_flag).u(1, 0).u(1, 0)

    def bytes(self) -> bytes:
        bits = self.bits + [0] * (-len(self.bits) % 8)
        return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


# --------------------------------------------------------------------------- known answers


@pytest.mark.parametrize(
    ("asc", "rate", "channels", "codec", "samples"),
    [
        (b"\x12\x10", 44100, 2, "mp4a.40.2", 1024),  # AAC-LC 44.1 kHz stereo
        (b"\x11\x90", 48000, 2, "mp4a.40.2", 1024),  # AAC-LC 48 kHz stereo
        (b"\x11\x88", 48000, 1, "mp4a.40.2", 1024),  # AAC-LC 48 kHz mono
        (b"\x11\x90\x56\xe5\x00", 48000, 2, "mp4a.40.2", 1024),  # ffmpeg: sync ext, no SBR
        (b"\x13\x94", 22050, 2, "mp4a.40.2", 960),  # frameLengthFlag = 1
        (b"\x11\xb0", 48000, 6, "mp4a.40.2", 1024),  # 5.1
        (b"\x11\xb8", 48000, 8, "mp4a.40.2", 1024),  # channelConfiguration 7 = 7.1
        (b"\x0a\x10", 44100, 2, "mp4a.40.1", 1024),  # AAC Main
        (b"\x16\x08", 7350, 1, "mp4a.40.2", 1024),  # index 12
        (b"\x10\x10", 96000, 2, "mp4a.40.2", 1024),  # index 0
    ],
)
def test_known_configs(asc: bytes, rate: int, channels: int, codec: str, samples: int) -> None:
    config = parse_asc(asc)
    assert (config.sample_rate, config.channels, config.codec) == (rate, channels, codec)
    assert config.samples_per_frame == samples
    assert config.asc == asc


def test_he_aac_explicit() -> None:
    # aot 5 (SBR), core 24 kHz stereo, extension 48 kHz, underlying AAC-LC.
    asc = Bits().aot(5).freq(6).u(4, 2).freq(3).aot(2).ga().bytes()
    assert asc.hex() == "2b118800"
    config = parse_asc(asc)
    assert (config.codec, config.sample_rate, config.channels) == ("mp4a.40.5", 48000, 2)
    assert config.samples_per_frame == 2048
    info = parse_asc_info(asc)
    assert (info.core_object_type, info.core_sample_rate, info.sbr, info.ps) == (
        2,
        24000,
        True,
        False,
    )


def test_he_aac_v2_parametric_stereo() -> None:
    asc = Bits().aot(29).freq(6).u(4, 1).freq(3).aot(2).ga().bytes()
    config = parse_asc(asc)
    assert (config.codec, config.sample_rate, config.channels) == ("mp4a.40.29", 48000, 2)
    assert parse_asc_info(asc).ps


def test_he_aac_downsampled_sbr_keeps_frame_length() -> None:
    asc = Bits().aot(5).freq(3).u(4, 2).freq(3).aot(2).ga().bytes()
    config = parse_asc(asc)
    assert (config.sample_rate, config.samples_per_frame) == (48000, 1024)


def test_implicit_sbr_and_ps_sync_extensions() -> None:
    base = Bits().aot(2).freq(7).u(4, 1).ga()  # AAC-LC 22.05 kHz mono
    asc = base.u(11, 0x2B7).aot(5).u(1, 1).freq(4).u(11, 0x548).u(1, 1).bytes()
    config = parse_asc(asc)
    assert (config.codec, config.sample_rate, config.samples_per_frame) == (
        "mp4a.40.2",
        44100,
        2048,
    )
    assert config.channels == 2  # parametric stereo
    info = parse_asc_info(asc)
    assert (info.sbr, info.ps, info.core_sample_rate) == (True, True, 22050)


def test_explicit_sampling_frequency() -> None:
    asc = Bits().aot(2).freq(15, 12345).u(4, 2).ga().bytes()
    config = parse_asc(asc)
    assert (config.sample_rate, config.channels) == (12345, 2)


def test_escaped_object_type() -> None:
    asc = Bits().aot(42).freq(3).u(4, 2).bytes()  # USAC: 31 + 6-bit escape
    assert asc[0] >> 3 == 31
    config = parse_asc(asc)
    assert (config.codec, config.sample_rate, config.channels) == ("mp4a.40.42", 48000, 2)


def test_low_delay_frame_lengths() -> None:
    ld = Bits().aot(23).freq(3).u(4, 1).ga(0).bytes()
    assert parse_asc(ld).samples_per_frame == 512
    ld_short = Bits().aot(23).freq(3).u(4, 1).ga(1).u(2, 0).bytes()
    assert parse_asc(ld_short).samples_per_frame == 480
    eld = Bits().aot(39).freq(3).u(4, 2).u(1, 1).bytes()
    assert (parse_asc(eld).samples_per_frame, parse_asc(eld).codec) == (480, "mp4a.40.39")


def test_program_config_element_channels() -> None:
    pce = (
        Bits().aot(2).freq(3).u(4, 0).ga()
        .u(4, 0).u(2, 1).u(4, 3)  # element tag, object type, sampling index
        .u(4, 2).u(4, 0).u(4, 1).u(2, 1).u(3, 0).u(4, 0)  # front 2, side 0, back 1, lfe 1
        .u(1, 0).u(1, 0).u(1, 0)  # no mixdowns
        .u(1, 0).u(4, 0).u(1, 1).u(4, 0)  # front: SCE + CPE
        .u(1, 1).u(4, 1)  # back: CPE
        .u(4, 0)  # lfe
    )  # fmt: skip
    pce.bits += [0] * (-len(pce.bits) % 8)  # byte_alignment
    asc = pce.u(8, 2).u(16, 0x4142).bytes()  # 2 comment bytes
    config = parse_asc(asc)
    assert (config.channels, config.sample_rate) == (6, 48000)


# --------------------------------------------------------------------------- real encodes


@pytest.mark.parametrize(
    ("rate", "channels"),
    [(48000, 2), (44100, 1), (22050, 2), (8000, 1), (96000, 2), (7350, 1), (48000, 6), (32000, 8)],
)
def test_matches_pyav_on_fresh_encodes(tmp_path: Path, rate: int, channels: int) -> None:
    out = tmp_path / "tone.mp4"
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi",
         "-i", f"sine=sample_rate={rate}:duration=0.1", "-ac", str(channels), "-c:a", "aac",
         str(out)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    with av.open(str(out)) as container:
        ctx = container.streams.audio[0].codec_context
        config = parse_asc(bytes(ctx.extradata or b""))
        assert (config.sample_rate, config.channels) == (ctx.sample_rate, ctx.channels)
        assert (config.sample_rate, config.channels) == (rate, channels)
        assert config.samples_per_frame == ctx.frame_size == 1024
        assert config.codec == "mp4a.40.2"


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("asc", "message"),
    [
        (b"", "too short"),
        (b"\x12", "too short"),
        (b"\x02\x10", "audioObjectType 0"),
        (b"\x16\x90", "reserved samplingFrequency index 13"),
        (b"\x17\x10", "reserved samplingFrequency index 14"),
        (b"\x12\x40", "reserved channelConfiguration 8"),
        (b"\x17\x80\x00", "truncated while reading explicit samplingFrequency"),
        (Bits().aot(2).freq(15, 0).u(4, 2).bytes(), "explicit samplingFrequency is 0"),
        (b"\x12\x00", "truncated while reading PCE"),
        (b"\xf8\x00", "truncated"),
        (Bits().aot(5).freq(3).u(4, 2).freq(3).aot(5).bytes(), "invalid core audioObjectType"),
        (Bits().aot(42).freq(3).u(4, 0).bytes(), "channelConfiguration 0 is unsupported"),
    ],
)
def test_malformed_configs(asc: bytes, message: str) -> None:
    with pytest.raises(MediaError, match=message):
        parse_asc(asc)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=24))
def test_random_bytes_only_raise_media_error(data: bytes) -> None:
    with contextlib.suppress(MediaError):
        config = parse_asc(data)
        assert config.sample_rate > 0 and config.channels > 0 and config.samples_per_frame > 0
