"""MSB-first bit reading with bounds checks, shared by the codec-config parsers.

Every read names the field it reads, so a truncated or malformed input raises a
``MediaError`` that says what was being read, never an ``IndexError``.
"""

from __future__ import annotations

from tidecast.media.errors import MediaError


class BitReader:
    __slots__ = ("_value", "_total", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._value = int.from_bytes(data, "big")
        self._total = len(data) * 8
        self._pos = 0
        self._what = what  # e.g. "SPS", "AudioSpecificConfig": names the input in errors

    @property
    def pos(self) -> int:
        return self._pos

    @property
    def bits_left(self) -> int:
        return self._total - self._pos

    def u(self, n: int, field: str) -> int:
        """Read an ``n``-bit unsigned integer."""
        if n == 0:
            return 0
        if self._pos + n > self._total:
            raise MediaError(f"{self._what} truncated while reading {field}")
        shift = self._total - self._pos - n
        self._pos += n
        return (self._value >> shift) & ((1 << n) - 1)

    def peek(self, n: int, field: str) -> int:
        saved = self._pos
        value = self.u(n, field)
        self._pos = saved
        return value

    def flag(self, field: str) -> bool:
        return self.u(1, field) == 1

    def ue(self, field: str, maximum: int | None = None) -> int:
        """Read an unsigned exp-Golomb code (``ue(v)``), optionally range-checked."""
        zeros = 0
        while self.u(1, field) == 0:
            zeros += 1
            if zeros > 31:
                raise MediaError(f"{self._what}: invalid exp-Golomb code for {field}")
        value = (1 << zeros) - 1 + self.u(zeros, field)
        if maximum is not None and value > maximum:
            raise MediaError(f"{self._what}: {field} = {value} is out of range (max {maximum})")
        return value

    def se(self, field: str) -> int:
        """Read a signed exp-Golomb code (``se(v)``)."""
        k = self.ue(field)
        return (k + 1) // 2 if k % 2 else -(k // 2)
