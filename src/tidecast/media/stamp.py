"""The machine-readable clock stamp burnt into test-pattern frames, sans-I/O.

A band along the top of the picture (``BAND`` of its height) holds ``CELLS`` equal
cells, each black or white, so that a frame says which instant it shows in a way a
program can read back after scaling and lossy encoding (x264 at 240p keeps it):

    cell 0       white   (reference: what "white" looks like in this frame)
    cell 1       black   (reference: what "black" looks like)
    cells 2..31  the value, 30 bits, most significant first (white = 1)
    cells 32..39 CRC-8 of the value (polynomial 0x07 over its 30 bits, xor-out 0x55)

The value is a time in milliseconds modulo 2^30 (12.4 days): the frame's media time
for a rendered source, or the wall clock for a live test pattern. Decoding samples the
middle of every cell, splits black from white half-way between the two references,
refuses a cell too close to that line, and accepts the value only if its CRC matches
(it catches every error of up to three bits, and any frame without a stamp).

``ffmpeg.py`` draws the cells from ``cell_box`` and ``bit_terms``; the browser reads
them with ``web/stamp.js``, which follows this layout.

    >>> value = 123456
    >>> decode_luma(render_luma(value, 320, 180), 320, 180) == value
    True
"""

from __future__ import annotations

from collections.abc import Sequence

CELLS = 40
VALUE_BITS = 30
CHECK_BITS = 8
MODULUS = 1 << VALUE_BITS
BAND = 1 / 16  # of the frame height, from the top
FIRST_VALUE_CELL = 2
FIRST_CHECK_CELL = FIRST_VALUE_CELL + VALUE_BITS
CRC_POLY = 0x07
CRC_XOROUT = 0x55
MIN_CONTRAST = 48  # luma levels between the white and the black reference
MARGIN = 0.2  # of the contrast: a cell this close to the middle is unreadable
assert FIRST_CHECK_CELL + CHECK_BITS == CELLS


def crc8(value: int) -> int:
    """CRC-8 (poly 0x07, init 0, xor-out 0x55) over the 30 bits of ``value``, MSB first."""
    crc = 0
    for k in range(VALUE_BITS - 1, -1, -1):
        top = ((crc >> 7) & 1) ^ ((value >> k) & 1)
        crc = (crc << 1) & 0xFF
        if top:
            crc ^= CRC_POLY
    return crc ^ CRC_XOROUT


def bits(value: int) -> list[int]:
    """The 40 cells of a stamp (1 = white): references, value bits, check bits."""
    v = value % MODULUS
    check = crc8(v)
    return ([1, 0] + [(v >> k) & 1 for k in range(VALUE_BITS - 1, -1, -1)]
            + [(check >> k) & 1 for k in range(CHECK_BITS - 1, -1, -1)])  # fmt: skip


def bit_terms() -> list[tuple[int, tuple[int, ...]]]:
    """Every cell as ``(constant, value bit positions)``: the cell is white when the
    constant plus those bits of the value is odd. The CRC is linear over GF(2) plus a
    constant, so each check bit is the parity of a fixed set of value bits; ffmpeg
    evaluates exactly that per frame. Value bit positions count from the LSB."""
    base = bits(0)
    terms: list[tuple[int, tuple[int, ...]]] = [(1, ()), (0, ())]
    terms += [(0, (k,)) for k in range(VALUE_BITS - 1, -1, -1)]
    for j in range(CHECK_BITS):
        cell = FIRST_CHECK_CELL + j
        which = tuple(k for k in range(VALUE_BITS - 1, -1, -1) if bits(1 << k)[cell] != base[cell])
        terms.append((base[cell], which))
    return terms


def cell_box(index: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel rectangle ``(x, y, w, h)`` of cell ``index`` in a ``width`` x ``height`` frame."""
    x0 = index * width // CELLS
    x1 = (index + 1) * width // CELLS
    return x0, 0, x1 - x0, band_height(height)


def band_height(height: int) -> int:
    return max(2, round(height * BAND))


def decode_cells(levels: Sequence[float]) -> int | None:
    """The value from the 40 cells' mean luma, or None if it cannot be trusted."""
    if len(levels) != CELLS:
        return None
    white, black = levels[0], levels[1]
    contrast = white - black
    if contrast < MIN_CONTRAST:
        return None
    middle = (white + black) / 2
    read: list[int] = []
    for level in levels:
        if abs(level - middle) < MARGIN * contrast:
            return None
        read.append(1 if level > middle else 0)
    value = 0
    for b in read[FIRST_VALUE_CELL:FIRST_CHECK_CELL]:
        value = value << 1 | b
    check = 0
    for b in read[FIRST_CHECK_CELL:]:
        check = check << 1 | b
    return value if check == crc8(value) else None


def cell_levels(plane: bytes | bytearray | memoryview, width: int, height: int,
                stride: int | None = None) -> list[float]:  # fmt: skip
    """Mean luma of the middle of every cell (the centre 40 % of its width, the centre
    half of the band's height) of a luma plane (8 bits, ``stride`` bytes a row)."""
    stride = width if stride is None else stride
    if width < CELLS or height < 2 or len(plane) < stride * (height - 1) + width:
        raise ValueError(f"a {width}x{height} plane (stride {stride}) cannot hold a stamp")
    mv = memoryview(plane).cast("B") if isinstance(plane, memoryview) else plane
    band = band_height(height)
    y0, y1 = band // 4, max(band // 4 + 1, band - band // 4)
    levels: list[float] = []
    for i in range(CELLS):
        cw = width / CELLS
        x0 = int(i * cw + 0.3 * cw)
        x1 = max(x0 + 1, int(i * cw + 0.7 * cw))
        total = 0
        for y in range(y0, y1):
            row = y * stride
            total += sum(mv[row + x0 : row + x1])
        levels.append(total / ((y1 - y0) * (x1 - x0)))
    return levels


def decode_luma(plane: bytes | bytearray | memoryview, width: int, height: int,
                stride: int | None = None) -> int | None:  # fmt: skip
    """The stamp of a frame given its luma plane: the value, or None (no stamp, or one
    that does not read cleanly or fails its check)."""
    return decode_cells(cell_levels(plane, width, height, stride))


def render_luma(value: int, width: int, height: int, black: int = 16, white: int = 235) -> bytes:
    """A luma plane holding only the stamp of ``value`` (grey elsewhere): what the
    encoder is given, for tests and the doctest above."""
    plane = bytearray([128]) * (width * height)
    for i, b in enumerate(bits(value)):
        x, y, w, h = cell_box(i, width, height)
        for row in range(y, y + h):
            plane[row * width + x : row * width + x + w] = bytes([white if b else black]) * w
    return bytes(plane)


def nearest(value: int, around_ms: int) -> int:
    """The time (ms) whose stamp is ``value`` nearest to ``around_ms``: undoes the
    modulo for a wall-clock stamp."""
    base = around_ms - (around_ms % MODULUS) + value
    return min((base - MODULUS, base, base + MODULUS), key=lambda t: abs(t - around_ms))
