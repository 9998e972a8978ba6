"""AMF0 (Action Message Format 0) encoding and decoding.

This module owns the mapping between AMF0 bytes and Python values, as used by
RTMP command messages (type 20) and data messages (type 18):

=====================  ==========================================
AMF0 type              Python value
=====================  ==========================================
number                 ``float`` (``int`` is accepted when encoding)
boolean                ``bool``
string / long string   ``str`` (long string chosen automatically
                       when the UTF-8 form exceeds 65535 bytes)
object                 ``dict`` with ``str`` keys
ECMA array             :class:`ECMAArray` (a ``dict`` subclass)
strict array           ``list`` (``tuple`` accepted when encoding)
null                   ``None``
undefined              :data:`UNDEFINED`
date                   :class:`AMFDate` (``datetime`` accepted when encoding)
=====================  ==========================================

Decoding also accepts XML documents (as ``str``), typed objects (as ``dict``,
class name dropped) and the "unsupported" marker (as :data:`UNDEFINED`).
References, movie clips, record sets and the AVM+ (AMF3) switch raise
:class:`AMF0DecodeError`.

Decoding is defensive: every read goes through a bounds-checked reader, nesting
depth and the total number of decoded values are capped, and any malformed or
truncated input raises :class:`AMF0DecodeError` (a
:class:`~tidecast.ingest.ProtocolError`), never anything else.
"""

from __future__ import annotations

import datetime as _dt
import enum
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from tidecast.ingest import ProtocolError

__all__ = [
    "AMF0DecodeError",
    "AMFDate",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_VALUES",
    "ECMAArray",
    "UNDEFINED",
    "Undefined",
    "decode_all",
    "encode",
]

# Type markers (AMF0 specification, section 2.1).
NUMBER: Final = 0x00
BOOLEAN: Final = 0x01
STRING: Final = 0x02
OBJECT: Final = 0x03
MOVIECLIP: Final = 0x04
NULL: Final = 0x05
UNDEFINED_MARKER: Final = 0x06
REFERENCE: Final = 0x07
ECMA_ARRAY: Final = 0x08
OBJECT_END: Final = 0x09
STRICT_ARRAY: Final = 0x0A
DATE: Final = 0x0B
LONG_STRING: Final = 0x0C
UNSUPPORTED: Final = 0x0D
RECORDSET: Final = 0x0E
XML_DOCUMENT: Final = 0x0F
TYPED_OBJECT: Final = 0x10
AVMPLUS: Final = 0x11

DEFAULT_MAX_DEPTH: Final = 32
"""Maximum container nesting depth accepted when decoding (and produced when encoding)."""

DEFAULT_MAX_VALUES: Final = 65536
"""Maximum number of values (including nested ones) in one :func:`decode_all` call."""

_SHORT_STRING_MAX: Final = 0xFFFF

_F64 = struct.Struct(">d")
_DATE = struct.Struct(">dh")


class AMF0DecodeError(ProtocolError):
    """Malformed, truncated, unsupported or over-limit AMF0 data."""


class Undefined(enum.Enum):
    """The AMF0 ``undefined`` value; use the :data:`UNDEFINED` singleton."""

    UNDEFINED = "undefined"

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False


UNDEFINED: Final = Undefined.UNDEFINED


class ECMAArray(dict[str, Any]):
    """An AMF0 ECMA array (associative array): a ``dict`` that encodes as type 0x08."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"ECMAArray({dict.__repr__(self)})"


@dataclass(frozen=True, slots=True)
class AMFDate:
    """An AMF0 date: milliseconds since the Unix epoch (UTC) and a timezone offset in minutes."""

    ms: float
    tz: int = 0

    @classmethod
    def from_datetime(cls, value: _dt.datetime) -> AMFDate:
        """Convert a ``datetime`` (naive values are taken as UTC)."""
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.UTC)
        return cls(ms=value.timestamp() * 1000.0, tz=0)

    def to_datetime(self) -> _dt.datetime:
        """The date as an aware UTC ``datetime``."""
        return _dt.datetime.fromtimestamp(self.ms / 1000.0, tz=_dt.UTC)


# --------------------------------------------------------------------------- decoding


class _Reader:
    """Bounds-checked cursor over the input, with nesting and value-count budgets."""

    __slots__ = ("_data", "pos", "_max_depth", "_values_left")

    def __init__(self, data: bytes, max_depth: int, max_values: int) -> None:
        self._data = data
        self.pos = 0
        self._max_depth = max_depth
        self._values_left = max_values

    @property
    def remaining(self) -> int:
        return len(self._data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > len(self._data) - self.pos:
            raise AMF0DecodeError(
                f"truncated AMF0 {what}: need {n} bytes at offset {self.pos}, "
                f"have {len(self._data) - self.pos}"
            )
        start = self.pos
        self.pos = start + n
        return self._data[start : self.pos]

    def peek(self, what: str) -> int:
        if self.pos >= len(self._data):
            raise AMF0DecodeError(f"truncated AMF0 {what} at offset {self.pos}")
        return self._data[self.pos]

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def u32(self, what: str) -> int:
        return int.from_bytes(self.take(4, what), "big")

    def f64(self, what: str) -> float:
        value: float = _F64.unpack(self.take(8, what))[0]
        return value

    def text(self, n: int, what: str) -> str:
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AMF0DecodeError(f"invalid UTF-8 in AMF0 {what}: {exc.reason}") from exc

    def count_value(self) -> None:
        self._values_left -= 1
        if self._values_left < 0:
            raise AMF0DecodeError("too many AMF0 values (decode limit exceeded)")

    def check_depth(self, depth: int) -> None:
        if depth > self._max_depth:
            raise AMF0DecodeError(f"AMF0 nesting deeper than {self._max_depth} levels")


def _read_value(r: _Reader, depth: int) -> Any:
    r.count_value()
    marker = r.u8("type marker")
    if marker == NUMBER:
        return r.f64("number")
    if marker == BOOLEAN:
        return r.u8("boolean") != 0
    if marker == STRING:
        return r.text(r.u16("string length"), "string")
    if marker == LONG_STRING:
        return r.text(r.u32("long string length"), "long string")
    if marker == XML_DOCUMENT:
        return r.text(r.u32("XML document length"), "XML document")
    if marker == NULL:
        return None
    if marker in (UNDEFINED_MARKER, UNSUPPORTED):
        return UNDEFINED
    if marker == OBJECT:
        r.check_depth(depth + 1)
        return _read_properties(r, {}, depth + 1)
    if marker == TYPED_OBJECT:
        r.check_depth(depth + 1)
        r.text(r.u16("class name length"), "class name")
        return _read_properties(r, {}, depth + 1)
    if marker == ECMA_ARRAY:
        r.check_depth(depth + 1)
        r.u32("ECMA array count")  # only a hint; many encoders write 0
        return _read_properties(r, ECMAArray(), depth + 1)
    if marker == STRICT_ARRAY:
        r.check_depth(depth + 1)
        count = r.u32("strict array count")
        if count > r.remaining:  # every element takes at least one byte
            raise AMF0DecodeError(
                f"truncated AMF0 strict array: {count} elements claimed, {r.remaining} bytes left"
            )
        return [_read_value(r, depth + 1) for _ in range(count)]
    if marker == DATE:
        ms, tz = _DATE.unpack(r.take(_DATE.size, "date"))
        return AMFDate(ms=ms, tz=tz)
    if marker == OBJECT_END:
        raise AMF0DecodeError("unexpected AMF0 object-end marker outside an object")
    if marker == REFERENCE:
        raise AMF0DecodeError("AMF0 references are not supported")
    if marker == AVMPLUS:
        raise AMF0DecodeError("AMF3 values inside AMF0 (AVM+ switch) are not supported")
    if marker in (MOVIECLIP, RECORDSET):
        raise AMF0DecodeError(f"reserved AMF0 type marker 0x{marker:02x}")
    raise AMF0DecodeError(f"unknown AMF0 type marker 0x{marker:02x}")


def _read_properties(r: _Reader, out: dict[str, Any], depth: int) -> dict[str, Any]:
    while True:
        key = r.text(r.u16("property name length"), "property name")
        if not key and r.peek("object-end marker") == OBJECT_END:
            r.pos += 1
            return out
        out[key] = _read_value(r, depth)


def decode_all(
    data: bytes,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_values: int = DEFAULT_MAX_VALUES,
) -> list[Any]:
    """Decode every AMF0 value in ``data`` (e.g. a whole command message payload).

    Raises :class:`AMF0DecodeError` for malformed, truncated or over-limit input.
    """
    r = _Reader(bytes(data), max_depth, max_values)
    values: list[Any] = []
    while r.remaining:
        values.append(_read_value(r, 0))
    return values


# --------------------------------------------------------------------------- encoding


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates
        raise ValueError(f"string is not encodable as UTF-8: {exc.reason}") from exc


def _write_key(out: bytearray, key: object) -> None:
    if not isinstance(key, str):
        raise TypeError(f"AMF0 object keys must be str, not {type(key).__name__}")
    raw = _utf8(key)
    if len(raw) > _SHORT_STRING_MAX:
        raise ValueError(f"AMF0 object key too long ({len(raw)} bytes)")
    out += len(raw).to_bytes(2, "big")
    out += raw


def _write_properties(out: bytearray, value: Mapping[Any, Any], depth: int) -> None:
    for key, item in value.items():
        _write_key(out, key)
        _write_value(out, item, depth)
    out += b"\x00\x00\x09"


def _write_value(out: bytearray, value: object, depth: int) -> None:
    if depth > DEFAULT_MAX_DEPTH:
        raise ValueError(f"AMF0 value nested deeper than {DEFAULT_MAX_DEPTH} levels")
    if value is None:
        out.append(NULL)
    elif value is UNDEFINED:
        out.append(UNDEFINED_MARKER)
    elif isinstance(value, bool):
        out.append(BOOLEAN)
        out.append(1 if value else 0)
    elif isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError as exc:
            raise ValueError(f"integer {value} is too large for an AMF0 number") from exc
        out.append(NUMBER)
        out += _F64.pack(number)
    elif isinstance(value, str):
        raw = _utf8(value)
        if len(raw) > _SHORT_STRING_MAX:
            out.append(LONG_STRING)
            out += len(raw).to_bytes(4, "big")
        else:
            out.append(STRING)
            out += len(raw).to_bytes(2, "big")
        out += raw
    elif isinstance(value, ECMAArray):
        out.append(ECMA_ARRAY)
        out += len(value).to_bytes(4, "big")
        _write_properties(out, value, depth + 1)
    elif isinstance(value, Mapping):
        out.append(OBJECT)
        _write_properties(out, value, depth + 1)
    elif isinstance(value, AMFDate):
        if not -0x8000 <= value.tz <= 0x7FFF:
            raise ValueError(f"AMF0 date timezone offset out of range: {value.tz}")
        out.append(DATE)
        out += _DATE.pack(value.ms, value.tz)
    elif isinstance(value, _dt.datetime):
        _write_value(out, AMFDate.from_datetime(value), depth)
    elif isinstance(value, list | tuple):
        items: Sequence[Any] = value
        out.append(STRICT_ARRAY)
        out += len(items).to_bytes(4, "big")
        for item in items:
            _write_value(out, item, depth + 1)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as AMF0")


def encode(*values: object) -> bytes:
    """Encode ``values`` back to back (e.g. a command: name, transaction id, args...).

    Raises ``TypeError`` for values with no AMF0 mapping and ``ValueError`` for values
    out of range (over-long keys, over-deep nesting, unencodable strings).
    """
    out = bytearray()
    for value in values:
        _write_value(out, value, 0)
    return bytes(out)


def is_number(value: object) -> bool:
    """True for a decoded AMF0 number (``bool`` excluded)."""
    return isinstance(value, float | int) and not isinstance(value, bool)


def as_int(value: object, *, lo: int = 0, hi: int = 0xFFFFFFFF) -> int | None:
    """A decoded number as an ``int`` in ``[lo, hi]``, or ``None`` (non-numbers, NaN, inf)."""
    if not is_number(value):
        return None
    assert isinstance(value, float | int)
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        return None
    result = int(value)
    if not lo <= result <= hi:
        return None
    return result
