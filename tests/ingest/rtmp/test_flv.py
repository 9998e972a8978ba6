"""FLV tag payloads: H.264 and AAC parsed; every other codec refused with a clear message."""

from __future__ import annotations

import pytest

from tidecast.ingest import ProtocolError
from tidecast.ingest.rtmp.flv import (
    AACPacketType,
    AVCPacketType,
    FLVError,
    UnsupportedCodec,
    parse_audio_tag,
    parse_video_tag,
)

H = bytes.fromhex


def test_avc_sequence_header() -> None:
    tag = parse_video_tag(H("17 00 000000 01640028ffe1"))
    assert tag is not None
    assert tag.packet_type is AVCPacketType.SEQUENCE_HEADER
    assert tag.keyframe
    assert tag.data == H("01640028ffe1")


def test_avc_nalu_keyframe_and_positive_composition_time() -> None:
    tag = parse_video_tag(H("17 01 000050 00000002 6588"))
    assert tag is not None
    assert tag.packet_type is AVCPacketType.NALU
    assert tag.keyframe
    assert tag.composition_time == 80
    assert tag.data == H("00000002 6588")


def test_avc_inter_frame_negative_composition_time() -> None:
    tag = parse_video_tag(H("27 01 ffffd8 00000001 41"))
    assert tag is not None
    assert not tag.keyframe
    assert tag.composition_time == -40


def test_avc_end_of_sequence() -> None:
    tag = parse_video_tag(H("17 02 000000"))
    assert tag is not None
    assert tag.packet_type is AVCPacketType.END_OF_SEQUENCE
    assert tag.data == b""


def test_video_command_frame_carries_no_picture() -> None:
    assert parse_video_tag(H("57 00")) is None
    assert parse_video_tag(H("52 01")) is None


def test_aac_sequence_header_and_raw_frame() -> None:
    header = parse_audio_tag(H("af 00 1210"))
    assert header.packet_type is AACPacketType.SEQUENCE_HEADER
    assert header.data == H("1210")
    assert (header.sound_rate, header.sound_size, header.sound_type) == (3, 1, 1)
    raw = parse_audio_tag(H("af 01 21 10 04"))
    assert raw.packet_type is AACPacketType.RAW
    assert raw.data == H("211004")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (H("1c 01 000000"), "video codec HEVC (FLV codec id 12) is not supported; publish H.264"),
        (H("1d 01 000000"), "video codec AV1 (FLV codec id 13) is not supported; publish H.264"),
        (H("12 00"), "video codec Sorenson H.263 (FLV codec id 2) is not supported"),
        (H("14 00"), "video codec On2 VP6 (FLV codec id 4) is not supported"),
        (H("1f 00"), "video codec unknown (FLV codec id 15) is not supported"),
        (
            H("90 68766331 0000"),  # IsExHeader | keyframe, PacketType SequenceStart, hvc1
            "video codec HEVC (enhanced RTMP FourCC hvc1) is not supported; publish H.264",
        ),
        (H("91 61763031"), "video codec AV1 (enhanced RTMP FourCC av01) is not supported"),
        (H("a1 76703039"), "video codec VP9 (enhanced RTMP FourCC vp09) is not supported"),
        (
            H("90 61766331"),
            "video codec H.264 (enhanced RTMP FourCC avc1) is not supported; "
            "publish H.264 with legacy (non-enhanced) RTMP",
        ),
        (H("96 00 68766331"), "video codec HEVC (enhanced RTMP FourCC hvc1)"),  # multitrack
        (H("90 00ff0102"), "video codec with enhanced RTMP FourCC 0x00ff0102 is not supported"),
    ],
)
def test_unsupported_video(payload: bytes, message: str) -> None:
    with pytest.raises(UnsupportedCodec) as info:
        parse_video_tag(payload)
    assert message in str(info.value)
    assert info.value.kind == "video"
    assert isinstance(info.value, ProtocolError)


@pytest.mark.parametrize(
    ("payload", "name", "message"),
    [
        (
            H("2f ff"),
            "MP3 (FLV sound format 2)",
            "audio codec MP3 (FLV sound format 2) is not supported; publish AAC",
        ),
        (H("ef ff"), "MP3 8 kHz (FLV sound format 14)", "is not supported; publish AAC"),
        (H("b6 00"), "Speex (FLV sound format 11)", "audio codec Speex"),
        (H("7e 00"), "G.711 A-law (FLV sound format 7)", "audio codec G.711 A-law"),
        (H("3f 00"), "Linear PCM (little endian) (FLV sound format 3)", "Linear PCM"),
        (
            H("90 4f707573"),
            "Opus (enhanced RTMP FourCC Opus)",
            "audio codec Opus (enhanced RTMP FourCC Opus) is not supported; publish AAC",
        ),
    ],
)
def test_unsupported_audio(payload: bytes, name: str, message: str) -> None:
    with pytest.raises(UnsupportedCodec) as info:
        parse_audio_tag(payload)
    assert info.value.kind == "audio"
    assert info.value.name == name
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "truncated video tag"),
        (H("17"), "truncated AVC video tag"),
        (H("17 01 0000"), "truncated AVC video tag"),
        (H("17 03 000000"), "invalid AVCPacketType 3"),
        (H("07 01 000000"), "invalid video frame type 0"),
        (H("77 01 000000"), "invalid video frame type 7"),
        (H("90 6876"), "truncated enhanced RTMP video tag"),
    ],
)
def test_malformed_video(payload: bytes, message: str) -> None:
    with pytest.raises(FLVError, match=message):
        parse_video_tag(payload)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "truncated audio tag"),
        (H("af"), "truncated AAC audio tag"),
        (H("af 02"), "invalid AACPacketType 2"),
        (H("90 4f70"), "truncated enhanced RTMP audio tag"),
    ],
)
def test_malformed_audio(payload: bytes, message: str) -> None:
    with pytest.raises(FLVError, match=message):
        parse_audio_tag(payload)
