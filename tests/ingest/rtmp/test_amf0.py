"""AMF0: one table of (Python value <-> exact bytes) drives encode, decode and hypothesis seeds."""

from __future__ import annotations

import datetime as dt
import math
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tidecast.ingest import ProtocolError
from tidecast.ingest.rtmp.amf0 import (
    UNDEFINED,
    AMF0DecodeError,
    AMFDate,
    ECMAArray,
    decode_all,
    encode,
)


def num(x: float) -> bytes:
    return b"\x00" + struct.pack(">d", x)


def s16(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


END = b"\x00\x00\x09"
LONG = "é" * 40000  # 80000 UTF-8 bytes: a long string

BOTH, ENCODE, DECODE = "both", "encode", "decode"

# (id, python value, exact AMF0 bytes, direction)
CASES: list[tuple[str, Any, bytes, str]] = [
    ("number-zero", 0.0, num(0.0), BOTH),
    ("number", 1.5, num(1.5), BOTH),
    ("number-negative", -(2.0**60), num(-(2.0**60)), BOTH),
    ("number-inf", math.inf, num(math.inf), BOTH),
    ("int", 31, num(31.0), ENCODE),
    ("true", True, b"\x01\x01", BOTH),
    ("false", False, b"\x01\x00", BOTH),
    ("true-nonzero-byte", True, b"\x01\x07", DECODE),
    ("string-empty", "", b"\x02\x00\x00", BOTH),
    ("string", "connect", b"\x02\x00\x07connect", BOTH),
    ("string-utf8", "caf\u00e9 \u2603", b"\x02" + s16("caf\u00e9 \u2603"), BOTH),
    ("string-max-short", "a" * 65535, b"\x02\xff\xff" + b"a" * 65535, BOTH),
    ("long-string", LONG, b"\x0c" + (80000).to_bytes(4, "big") + LONG.encode(), BOTH),
    (
        "long-string-short-content",
        "hi",
        b"\x0c\x00\x00\x00\x02hi",
        DECODE,
    ),
    ("null", None, b"\x05", BOTH),
    ("undefined", UNDEFINED, b"\x06", BOTH),
    ("unsupported-marker", UNDEFINED, b"\x0d", DECODE),
    ("object-empty", {}, b"\x03" + END, BOTH),
    (
        "object",
        {"app": "live", "capabilities": 31.0, "fpad": False},
        b"\x03"
        + s16("app")
        + b"\x02"
        + s16("live")
        + s16("capabilities")
        + num(31.0)
        + s16("fpad")
        + b"\x01\x00"
        + END,
        BOTH,
    ),
    (
        "object-nested",
        {"a": {"b": [1.0, None]}},
        b"\x03"
        + s16("a")
        + b"\x03"
        + s16("b")
        + b"\x0a\x00\x00\x00\x02"
        + num(1.0)
        + b"\x05"
        + END
        + END,
        BOTH,
    ),
    ("object-empty-key", {"": 1.0}, b"\x03\x00\x00" + num(1.0) + END, BOTH),
    ("ecma-array-empty", ECMAArray(), b"\x08\x00\x00\x00\x00" + END, BOTH),
    (
        "ecma-array",
        ECMAArray({"width": 640.0, "encoder": "Lavf"}),
        b"\x08\x00\x00\x00\x02"
        + s16("width")
        + num(640.0)
        + s16("encoder")
        + b"\x02"
        + s16("Lavf")
        + END,
        BOTH,
    ),
    (
        "ecma-array-wrong-count",  # the count is a hint; encoders often write 0
        ECMAArray({"duration": 0.0}),
        b"\x08\x00\x00\x00\x00" + s16("duration") + num(0.0) + END,
        DECODE,
    ),
    ("strict-array-empty", [], b"\x0a\x00\x00\x00\x00", BOTH),
    (
        "strict-array",
        [1.0, "x", None, UNDEFINED],
        b"\x0a\x00\x00\x00\x04" + num(1.0) + b"\x02" + s16("x") + b"\x05\x06",
        BOTH,
    ),
    ("tuple", (1.0, True), b"\x0a\x00\x00\x00\x02" + num(1.0) + b"\x01\x01", ENCODE),
    ("date", AMFDate(1_700_000_000_000.0, 0), b"\x0b" + struct.pack(">dh", 1.7e12, 0), BOTH),
    ("date-tz", AMFDate(0.0, -120), b"\x0b" + struct.pack(">dh", 0.0, -120), BOTH),
    (
        "datetime",
        dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC),
        b"\x0b" + struct.pack(">dh", 1.7e12, 0),
        ENCODE,
    ),
    ("xml-document", "<a/>", b"\x0f\x00\x00\x00\x04<a/>", DECODE),
    (
        "typed-object",
        {"x": 1.0},
        b"\x10" + s16("Point") + s16("x") + num(1.0) + END,
        DECODE,
    ),
]

ENCODE_CASES = [c for c in CASES if c[3] in (BOTH, ENCODE)]
DECODE_CASES = [c for c in CASES if c[3] in (BOTH, DECODE)]


def same(a: Any, b: Any) -> bool:
    """Deep equality that also checks types (True is not 1.0, ECMAArray is not dict)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, AMFDate):
        return same(a.ms, b.ms) and a.tz == b.tz
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def seeded(examples: list[Any]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Add every table entry as an explicit hypothesis example."""

    def decorate(test: Callable[..., None]) -> Callable[..., None]:
        for value in examples:
            test = example(value)(test)
        return test

    return decorate


@pytest.mark.parametrize(
    ("value", "data"), [c[1:3] for c in ENCODE_CASES], ids=[c[0] for c in ENCODE_CASES]
)
def test_encode(value: Any, data: bytes) -> None:
    assert encode(value) == data


@pytest.mark.parametrize(
    ("value", "data"), [c[1:3] for c in DECODE_CASES], ids=[c[0] for c in DECODE_CASES]
)
def test_decode(value: Any, data: bytes) -> None:
    decoded = decode_all(data)
    assert len(decoded) == 1
    assert same(decoded[0], value), decoded[0]


def test_encode_several_values_back_to_back() -> None:
    data = encode("_result", 1, None, {"level": "status"})
    assert data == (
        b"\x02" + s16("_result") + num(1.0) + b"\x05" + b"\x03" + s16("level")
        + b"\x02" + s16("status") + END
    )  # fmt: skip
    assert same(decode_all(data), ["_result", 1.0, None, {"level": "status"}])


def test_decode_all_of_nothing_is_empty() -> None:
    assert decode_all(b"") == []


def test_undefined_singleton_and_date_conversion() -> None:
    assert decode_all(b"\x06")[0] is UNDEFINED
    assert not UNDEFINED
    assert repr(UNDEFINED) == "UNDEFINED"
    date = AMFDate(1_700_000_000_000.0)
    assert date.to_datetime() == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)
    assert AMFDate.from_datetime(dt.datetime(1970, 1, 1)) == AMFDate(0.0, 0)


def test_long_string_is_chosen_by_utf8_length() -> None:
    assert encode("é" * 32767)[0] == 0x02  # 65534 bytes
    assert encode("é" * 32768)[0] == 0x0C  # 65536 bytes


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x01\x02", "truncated AMF0 number"),
        (b"\x01", "truncated AMF0 boolean"),
        (b"\x02\x00\x05abc", "truncated AMF0 string"),
        (b"\x02\x00", "truncated AMF0 string length"),
        (b"\x0c\xff\xff\xff\xffabc", "truncated AMF0 long string"),
        (b"\x02\x00\x02\xff\xfe", "invalid UTF-8"),
        (b"\x03\x00\x01a\x05", "truncated AMF0 property name length"),
        (b"\x03\x00\x01a\x05\x00\x00", "truncated AMF0 object-end marker"),
        (b"\x08\x00\x00\x00\x01", "truncated AMF0 property name length"),
        (b"\x0a\xff\xff\xff\xff\x05", "4294967295 elements claimed"),
        (b"\x0b\x00", "truncated AMF0 date"),
        (b"\x09", "object-end marker outside an object"),
        (b"\x07\x00\x01", "references are not supported"),
        (b"\x11\x01", "AMF3"),
        (b"\x04", "reserved AMF0 type marker 0x04"),
        (b"\x0e", "reserved AMF0 type marker 0x0e"),
        (b"\x12", "unknown AMF0 type marker 0x12"),
        (b"\xff", "unknown AMF0 type marker 0xff"),
    ],
)
def test_malformed_input_raises_decode_error(data: bytes, message: str) -> None:
    with pytest.raises(AMF0DecodeError, match=message) as info:
        decode_all(data)
    assert isinstance(info.value, ProtocolError)


def test_nesting_depth_limit() -> None:
    ok = b"\x0a\x00\x00\x00\x01" * 32 + b"\x05"
    assert decode_all(ok)
    too_deep = b"\x0a\x00\x00\x00\x01" * 33 + b"\x05"
    with pytest.raises(AMF0DecodeError, match="nesting deeper than 32"):
        decode_all(too_deep)
    with pytest.raises(AMF0DecodeError, match="nesting deeper than 4"):
        decode_all(b"\x03" + s16("a") + ok, max_depth=4)


def test_value_count_limit() -> None:
    data = b"\x0a\x00\x00\x00\x0a" + b"\x05" * 10
    assert len(decode_all(data, max_values=11)[0]) == 10
    with pytest.raises(AMF0DecodeError, match="too many AMF0 values"):
        decode_all(data, max_values=10)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (b"bytes", TypeError),
        (object(), TypeError),
        ({1: "x"}, TypeError),
        ({"k" * 65536: 1.0}, ValueError),
        (10**400, ValueError),
        ("\ud800", ValueError),
        (AMFDate(0.0, 40000), ValueError),
    ],
)
def test_encode_rejects_what_amf0_cannot_carry(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        encode(value)


def test_encode_rejects_too_deep_nesting() -> None:
    value: Any = None
    for _ in range(40):
        value = [value]
    with pytest.raises(ValueError, match="nested deeper"):
        encode(value)


# ------------------------------------------------------------------------- properties

keys = st.text(max_size=8)
scalars = (
    st.floats(allow_nan=False)
    | st.booleans()
    | st.text(max_size=20)
    | st.none()
    | st.just(UNDEFINED)
    | st.builds(AMFDate, st.floats(allow_nan=False), st.integers(-0x8000, 0x7FFF))
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(keys, inner, max_size=4)
        | st.dictionaries(keys, inner, max_size=4).map(ECMAArray)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=1000)
@seeded([c[1] for c in CASES if c[3] == BOTH])
@given(values)
def test_round_trip(value: Any) -> None:
    assert same(decode_all(encode(value)), [value])


@settings(max_examples=400, deadline=1000)
@seeded([c[2] for c in DECODE_CASES] + [c[2][:-1] for c in DECODE_CASES])
@given(st.binary(max_size=300))
def test_decode_of_arbitrary_bytes_raises_only_decode_error(data: bytes) -> None:
    try:
        decoded = decode_all(data)
    except AMF0DecodeError:
        return
    # Whatever decodes re-encodes to something that decodes to the same values.
    assert same(decode_all(encode(*decoded)), decoded)
