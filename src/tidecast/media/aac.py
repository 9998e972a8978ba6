"""AAC AudioSpecificConfig parsing.

This module owns the interpretation of the MPEG-4 ``AudioSpecificConfig``
(ISO/IEC 14496-3 §1.6.2.1) that RTMP/FLV carries as the AAC sequence header and
MP4 carries inside ``esds``: audio object type (with the escape value 31),
sampling frequency (table index or explicit 24-bit value), channel configuration
(including a program config element when it is 0), SBR/PS signalling (HE-AAC v1/v2,
explicit hierarchical or backward-compatible sync extension) and the
``frameLengthFlag`` (960 vs 1024 samples per frame).

:func:`parse_asc` is pure and raises :class:`MediaError` for malformed input.
"""

from __future__ import annotations

from dataclasses import dataclass

from tidecast.media.bits import BitReader
from tidecast.media.errors import MediaError
from tidecast.media.frames import AudioConfig

__all__ = ["AscInfo", "SAMPLING_FREQUENCIES", "parse_asc", "parse_asc_info"]

SAMPLING_FREQUENCIES: tuple[int, ...] = (
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
)  # fmt: skip

AOT_SBR = 5
AOT_PS = 29
# Object types whose decoder-specific config is a GASpecificConfig.
_GA_TYPES = frozenset({1, 2, 3, 4, 6, 7, 17, 19, 20, 21, 22, 23})
_ER_TYPES = frozenset({17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 39})
_LOW_DELAY_TYPES = frozenset({23, 39})  # ER AAC LD / ELD: 512 (or 480) samples per frame

# channelConfiguration -> channel count (ISO/IEC 14496-3 table 1.19, 23003-3 additions).
_CHANNELS = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 8, 11: 7, 12: 8, 13: 24, 14: 8}

_SYNC_SBR = 0x2B7
_SYNC_PS = 0x548


@dataclass(frozen=True, slots=True)
class AscInfo:
    """Everything :func:`parse_asc_info` learns from an AudioSpecificConfig."""

    audio_object_type: int  # as signalled first (5 / 29 for explicit HE-AAC v1 / v2)
    core_object_type: int  # the underlying codec (2 for HE-AAC over AAC-LC)
    core_sample_rate: int
    sample_rate: int  # output rate: the SBR rate when SBR is present
    channel_configuration: int
    channels: int  # output channels (2 when parametric stereo is signalled over mono)
    frame_length: int  # core samples per frame (1024/960, 512/480 for LD/ELD)
    sbr: bool
    ps: bool

    @property
    def samples_per_frame(self) -> int:
        """Output samples per AAC frame at :attr:`sample_rate`."""
        if self.sbr and self.sample_rate > self.core_sample_rate:
            return self.frame_length * 2
        return self.frame_length

    @property
    def codec(self) -> str:
        """RFC 6381 codec string, ``mp4a.40.<audio object type>``."""
        return f"mp4a.40.{self.audio_object_type}"


def _object_type(r: BitReader, field: str) -> int:
    aot = r.u(5, field)
    if aot == 31:
        aot = 32 + r.u(6, f"{field} (escape)")
    return aot


def _sampling_frequency(r: BitReader, field: str) -> int:
    index = r.u(4, f"{field} index")
    if index == 0x0F:
        rate = r.u(24, f"explicit {field}")
        if rate == 0:
            raise MediaError(f"AudioSpecificConfig: explicit {field} is 0")
        return rate
    if index >= len(SAMPLING_FREQUENCIES):
        raise MediaError(f"AudioSpecificConfig: reserved {field} index {index}")
    return SAMPLING_FREQUENCIES[index]


def _program_config_channels(r: BitReader) -> int:
    """Parse a program_config_element() and return its output channel count."""
    r.u(4, "PCE element_instance_tag")
    r.u(2, "PCE object_type")
    r.u(4, "PCE sampling_frequency_index")
    front = r.u(4, "PCE num_front_channel_elements")
    side = r.u(4, "PCE num_side_channel_elements")
    back = r.u(4, "PCE num_back_channel_elements")
    lfe = r.u(2, "PCE num_lfe_channel_elements")
    assoc = r.u(3, "PCE num_assoc_data_elements")
    cc = r.u(4, "PCE num_valid_cc_elements")
    if r.u(1, "PCE mono_mixdown_present"):
        r.u(4, "PCE mono_mixdown_element_number")
    if r.u(1, "PCE stereo_mixdown_present"):
        r.u(4, "PCE stereo_mixdown_element_number")
    if r.u(1, "PCE matrix_mixdown_idx_present"):
        r.u(3, "PCE matrix_mixdown_idx and pseudo_surround_enable")
    channels = 0
    for _ in range(front + side + back):
        is_cpe = r.u(1, "PCE is_cpe")
        r.u(4, "PCE element tag")
        channels += 2 if is_cpe else 1
    for _ in range(lfe):
        r.u(4, "PCE lfe element tag")
        channels += 1
    for _ in range(assoc):
        r.u(4, "PCE assoc data element tag")
    for _ in range(cc):
        r.u(5, "PCE cc element")
    r.u((8 - r.pos % 8) % 8, "PCE byte alignment")
    comment = r.u(8, "PCE comment_field_bytes")
    r.u(8 * comment, "PCE comment field")
    if channels == 0:
        raise MediaError("AudioSpecificConfig: program config element declares no channels")
    return channels


def parse_asc_info(asc: bytes) -> AscInfo:
    """Parse an AudioSpecificConfig into an :class:`AscInfo`."""
    if len(asc) < 2:
        raise MediaError(f"AudioSpecificConfig too short ({len(asc)} bytes)")
    r = BitReader(asc, "AudioSpecificConfig")
    aot = _object_type(r, "audioObjectType")
    if aot == 0:
        raise MediaError("AudioSpecificConfig: audioObjectType 0 (null object) is invalid")
    core_rate = _sampling_frequency(r, "samplingFrequency")
    channel_config = r.u(4, "channelConfiguration")

    core_aot = aot
    sbr = False
    ps = False
    ext_rate = core_rate
    if aot in (AOT_SBR, AOT_PS):
        sbr = True
        ps = aot == AOT_PS
        ext_rate = _sampling_frequency(r, "extensionSamplingFrequency")
        core_aot = _object_type(r, "core audioObjectType")
        if core_aot in (0, AOT_SBR, AOT_PS):
            raise MediaError(f"AudioSpecificConfig: invalid core audioObjectType {core_aot}")
        if core_aot == 22:
            r.u(4, "extensionChannelConfiguration")

    if channel_config in _CHANNELS:
        channels = _CHANNELS[channel_config]
    elif channel_config != 0:
        raise MediaError(f"AudioSpecificConfig: reserved channelConfiguration {channel_config}")
    elif core_aot not in _GA_TYPES:
        raise MediaError(
            f"AudioSpecificConfig: channelConfiguration 0 is unsupported for object type {core_aot}"
        )
    else:
        channels = 0  # filled from the program config element below

    frame_length = 1024
    if core_aot in _GA_TYPES:
        short_frame = r.u(1, "frameLengthFlag") == 1
        base = 512 if core_aot in _LOW_DELAY_TYPES else 1024
        frame_length = base * 15 // 16 if short_frame else base
        if r.u(1, "dependsOnCoreCoder"):
            r.u(14, "coreCoderDelay")
        extension_flag = r.u(1, "extensionFlag")
        if channel_config == 0:
            channels = _program_config_channels(r)
        if core_aot in (6, 20):
            r.u(3, "layerNr")
        if extension_flag:
            if core_aot == 22:
                r.u(16, "numOfSubFrame and layer_length")
            if core_aot in (17, 19, 20, 23):
                r.u(3, "aacSection/Scalefactor/SpectralDataResilienceFlag")
            r.u(1, "extensionFlag3")
    elif core_aot == 39:
        frame_length = 480 if r.u(1, "ELD frameLengthFlag") else 512

    if core_aot in _ER_TYPES and core_aot != 39 and r.bits_left >= 2:
        r.u(2, "epConfig")

    # Backward-compatible (implicit) SBR / PS signalling via a sync extension.
    if not sbr and r.bits_left >= 16 and r.peek(11, "sync extension") == _SYNC_SBR:
        r.u(11, "syncExtensionType")
        ext_aot = _object_type(r, "extensionAudioObjectType")
        if ext_aot == AOT_SBR and r.u(1, "sbrPresentFlag"):
            sbr = True
            ext_rate = _sampling_frequency(r, "extensionSamplingFrequency")
            if r.bits_left >= 12 and r.peek(11, "sync extension") == _SYNC_PS:
                r.u(11, "syncExtensionType")
                ps = r.u(1, "psPresentFlag") == 1

    if ps and channels == 1:
        channels = 2
    return AscInfo(
        audio_object_type=aot,
        core_object_type=core_aot,
        core_sample_rate=core_rate,
        sample_rate=ext_rate if sbr else core_rate,
        channel_configuration=channel_config,
        channels=channels,
        frame_length=frame_length,
        sbr=sbr,
        ps=ps,
    )


def parse_asc(asc: bytes) -> AudioConfig:
    """Parse an AudioSpecificConfig into an :class:`AudioConfig`.

    ``sample_rate`` is the decoder output rate (the SBR rate for HE-AAC) and
    ``samples_per_frame`` is expressed at that rate (2048 for dual-rate HE-AAC),
    so ``samples_per_frame / sample_rate`` is always the frame duration. The codec
    string uses the object type as signalled first (``mp4a.40.5`` for explicit
    HE-AAC, ``mp4a.40.2`` for AAC-LC even with backward-compatible SBR signalling).
    """
    info = parse_asc_info(asc)
    return AudioConfig(
        asc=bytes(asc),
        sample_rate=info.sample_rate,
        channels=info.channels,
        codec=info.codec,
        samples_per_frame=info.samples_per_frame,
    )
