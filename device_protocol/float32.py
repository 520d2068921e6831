"""Which numbers of a payload were sent as float32, and the decimal a float32 stands for.

msgpack-python reads a float32 (0xca) into a Python float without saying so; a number that
becomes a label value (a histogram bound -> `le`) needs to know: the float32 nearest 0.005 is
0.004999999888241291, and a firmware that wrote `0.005f` means "0.005". `float32_paths` walks
a payload that msgpack has already accepted and returns where its float32 values are;
`shortest_float32` gives the shortest decimal that reads back as the same float32 (what Go's
`FormatFloat(x, 'g', -1, 32)` and numpy print), as a float.

Only births are walked (bounds live there; births are rare), and only when the payload has a
0xca byte at all. The walk is iterative below `max_depth` (no recursion limit to hit) and reads
no more than the C unpacker already did.
"""

from __future__ import annotations

import struct
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal
from math import isfinite
from typing import Any

Path = tuple[Any, ...]

_F32 = struct.Struct("<f")
_BITS = struct.Struct("<I")
_LENGTH = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}  # bin8..32, str8..32
_EXT_LENGTH = {0xC7: 1, 0xC8: 2, 0xC9: 4}
_FIXED = {  # marker -> bytes after it: nil/bool, float64, (u)int8..64, fixext1..16
    0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,
}
# Fleets share a few dozen bucket layouts: bounds seen before cost a dict lookup (~2 µs else).
_KNOWN_MAX = 4096
_known: dict[float, float] = {}
_ARRAY, _MAP, _STR, _FLOAT32, _OTHER = range(5)
_CONTAINER = {0xDC: (_ARRAY, 2), 0xDD: (_ARRAY, 4), 0xDE: (_MAP, 2), 0xDF: (_MAP, 4)}


def shortest_float32(value: float) -> float:
    """The float nearest the shortest decimal that rounds to `value` as a float32 (the nearest
    such decimal if several, ties to an even last digit)."""
    known = _known.get(value)
    if known is not None and value:  # (0.0 == -0.0 as a key)
        return known
    if len(_known) >= _KNOWN_MAX:
        _known.clear()
    _known[value] = shortest = _shortest(value)
    return shortest


def _shortest(value: float) -> float:
    if _BITS.unpack(_F32.pack(value))[0] & 0x7FFFFF == 0:
        return _shortest_at_power_of_two(value)
    # The float32s next to this one are equally far on both sides, so the nearest decimal of
    # n digits ('%.*g') reads back whenever any decimal of n digits does, and then so does
    # the nearest of n + 1 digits: the first n that works is found by bisection.
    low, high = 1, 9  # 9 digits always read back as the same float32
    while low < high:
        digits = (low + high) // 2
        if _reads_back(float(f"{value:.{digits}g}"), value):
            high = digits
        else:
            low = digits + 1
    return float(f"{value:.{low}g}")


def _shortest_at_power_of_two(value: float) -> float:
    # The float32 below a power of two is half as far as the one above, so the nearest decimal
    # may fall just outside where one further away on the other side would read back.
    if not isfinite(value):
        return value
    exact = Decimal(value)
    for digits in range(1, 10):
        around = [Context(prec=digits, rounding=r).plus(exact)
                  for r in (ROUND_FLOOR, ROUND_CEILING)]
        good = [d for d in around if _reads_back(float(d), value)]
        if good:
            return float(min(good, key=lambda d: abs(d - exact)))
    return value  # unreachable: 9 digits always read back


def _reads_back(candidate: float, value: float) -> bool:
    try:
        return bool(_F32.unpack(_F32.pack(candidate))[0] == value)
    except OverflowError:  # rounded up past the largest float32
        return False


def float32_paths(payload: bytes, max_depth: int = 8) -> frozenset[Path]:
    """Paths (map keys and array indexes from the top) of the float32 values in a payload.

    The payload must be one msgpack object that msgpack has decoded without error. Values
    nested deeper than max_depth are skipped; str and int map keys are kept in the paths,
    other keys become None.
    """
    found: set[Path] = set()
    # One frame per open container: [is_map, entries left, path, next array index or map key].
    stack: list[list[Any]] = []
    pos = 0
    path: Path = ()
    while True:
        kind, count, _value, pos = _item(payload, pos)
        if kind == _FLOAT32:
            found.add(path)
        elif kind in (_ARRAY, _MAP) and count:
            if len(stack) >= max_depth:
                pos = _skip(payload, pos, count * 2 if kind == _MAP else count)
            else:
                stack.append([kind == _MAP, count, path, 0])
                if kind == _MAP:
                    key, pos = _key(payload, pos)
                    path = (*path, key)
                else:
                    path = (*path, 0)
                continue
        # The value at `path` is done: move to the next one of the innermost open container.
        while stack:
            frame = stack[-1]
            frame[1] -= 1
            if frame[1]:
                if frame[0]:
                    key, pos = _key(payload, pos)
                    path = (*frame[2], key)
                else:
                    frame[3] += 1
                    path = (*frame[2], frame[3])
                break
            stack.pop()
        else:
            return frozenset(found)


def _key(payload: bytes, pos: int) -> tuple[Any, int]:
    kind, count, value, pos = _item(payload, pos)
    if kind == _ARRAY or kind == _MAP:  # a container as a key: skip its entries
        return None, _skip(payload, pos, count * 2 if kind == _MAP else count)
    if kind == _STR:
        return value.decode(), pos  # valid utf-8: msgpack decoded it already
    return value, pos  # an int key; None for any other


def _skip(payload: bytes, pos: int, entries: int) -> int:
    while entries:
        kind, count, _, pos = _item(payload, pos)
        entries -= 1
        if kind == _ARRAY:
            entries += count
        elif kind == _MAP:
            entries += 2 * count
    return pos


def _item(payload: bytes, pos: int) -> tuple[int, int, Any, int]:
    """(kind, entries if a container, the bytes of a str or the value of an int, position
    after its header or, for anything but a container, after the whole value)."""
    marker = payload[pos]
    pos += 1
    if marker <= 0x7F:
        return _OTHER, 0, marker, pos
    if marker >= 0xE0:
        return _OTHER, 0, marker - 0x100, pos
    if marker <= 0x8F:
        return _MAP, marker & 0x0F, None, pos
    if marker <= 0x9F:
        return _ARRAY, marker & 0x0F, None, pos
    if marker <= 0xBF:
        end = pos + (marker & 0x1F)
        return _STR, 0, payload[pos:end], end
    if marker == 0xCA:
        return _FLOAT32, 0, None, pos + 4
    if marker in _FIXED:
        size = _FIXED[marker]
        if 0xCC <= marker <= 0xD3:
            signed = marker >= 0xD0
            number = int.from_bytes(payload[pos : pos + size], "big", signed=signed)
            return _OTHER, 0, number, pos + size
        return _OTHER, 0, None, pos + size
    if marker in _LENGTH:
        width = _LENGTH[marker]
        start = pos + width
        end = start + int.from_bytes(payload[pos:start], "big")
        if marker >= 0xD9:
            return _STR, 0, payload[start:end], end
        return _OTHER, 0, None, end
    if marker in _EXT_LENGTH:
        width = _EXT_LENGTH[marker]
        size = int.from_bytes(payload[pos : pos + width], "big")
        return _OTHER, 0, None, pos + width + 1 + size
    if marker in _CONTAINER:
        kind, width = _CONTAINER[marker]
        return kind, int.from_bytes(payload[pos : pos + width], "big"), None, pos + width
    raise ValueError(f"0x{marker:02x} at {pos - 1} is not msgpack")  # msgpack refused it first
