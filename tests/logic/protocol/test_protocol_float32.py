"""Numbers that become label values (histogram bounds -> `le`) keep the precision they were sent in.

Firmware written in C often has `float` bounds and packs them as msgpack float32 (0xca). The
float32 nearest 0.005 is 0.004999999888241291: read as a float64 it would make the label
`le="0.004999999888241291"`, where a Python exporter with the bucket 0.005 writes `le="0.005"`.
A bound sent as float32 is read as the shortest decimal that round-trips through float32;
one sent as float64, as the shortest decimal that round-trips through float64 (Python's repr).
The payloads here are built by hand, byte by byte: our own encoder only writes float64.
"""

from __future__ import annotations

import math
import struct
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_protocol import decode_birth
from device_protocol.float32 import float32_paths, shortest_float32
from tests.logic.protocol.protocol_payloads import birth_map, pack

F32 = struct.Struct(">f")


def f32(value: float) -> bytes:
    return b"\xca" + F32.pack(value)


def f64(value: float) -> bytes:
    return b"\xcb" + struct.pack(">d", value)


def as_float32(value: float) -> float:
    return F32.unpack(F32.pack(value))[0]


def birth_with_bounds(*encoded: bytes) -> bytes:
    """A valid birth whose histogram (alias 2, the last entry) has these encoded bounds."""
    marker = pack([0.01, 0.1, 1.0])
    payload = pack(birth_map())
    assert payload.count(marker) == 1
    return payload.replace(marker, bytes((0x90 + len(encoded),)) + b"".join(encoded))


def bounds_of(payload: bytes) -> tuple[float, ...]:
    return decode_birth(payload).metrics[2].bounds


def test_float32_bounds_are_read_as_the_decimals_the_firmware_wrote() -> None:
    sent = (1e-05, 0.005, 0.01, 0.1, 0.25, 1.0, 2.5, 3.3, 10.0, 1_000_000.0)
    assert as_float32(0.005) == 0.004999999888241291  # what a plain float32 read would give
    assert bounds_of(birth_with_bounds(*(f32(b) for b in sent))) == sent


def test_float64_bounds_keep_float64_precision() -> None:
    # A bound sent as float64 is the float64 it is, even one that happens to be a float32 value.
    sent = (0.004999999888241291, 0.005, 0.1, 0.30000000000000004)
    assert bounds_of(birth_with_bounds(*(f64(b) for b in sent))) == sent


def test_a_birth_may_mix_widths_and_ints() -> None:
    payload = birth_with_bounds(f32(0.005), f64(0.0051), b"\x01", f32(2.5), b"\xcd\x01\x00")
    assert bounds_of(payload) == (0.005, 0.0051, 1.0, 2.5, 256.0)


def test_a_float32_that_needs_all_its_digits_keeps_them() -> None:
    # 0.123456789 has no float32: the nearest one's shortest decimal has 8 digits.
    assert bounds_of(birth_with_bounds(f32(0.123456789))) == (0.12345679,)
    assert bounds_of(birth_with_bounds(f64(0.123456789))) == (0.123456789,)


def test_float32_elsewhere_in_the_birth_does_not_confuse_the_bounds() -> None:
    # 0xca inside a string, a float32 under an unknown key: only real bounds are rewritten.
    payload = birth_with_bounds(f32(0.005))
    extra = b"\xa5extra\x93" + f32(0.1) + b"\xa2\xca\x80" + b"\xc4\x02\xca\xca"  # "ʀ", bin
    payload = bytes((payload[0] + 1,)) + payload[1:] + extra
    assert bounds_of(payload) == (0.005,)


def test_float32_bounds_are_still_checked() -> None:
    from device_protocol import InvalidBirth

    with pytest.raises(InvalidBirth, match="bounds not increasing"):
        decode_birth(birth_with_bounds(f32(0.5), f32(0.25)))
    with pytest.raises(InvalidBirth, match="bound not finite"):
        decode_birth(birth_with_bounds(f32(0.5), f32(math.inf)))
    # Two float64 bounds that share one float32 stay distinct (the check sees what was sent).
    assert bounds_of(birth_with_bounds(f64(0.1), f64(0.10000000000000002))) == (
        0.1, 0.10000000000000002)


def test_float32_paths_finds_only_float32_values_by_their_path() -> None:
    # {"a": [f32 1.5, f64 1.5], "b": "ʀ" (utf-8 ca 80), 1: {2: f32 2.0}}
    payload = b"\x83\xa1a\x92" + f32(1.5) + f64(1.5) + b"\xa1b\xa2\xca\x80"
    payload += b"\x01\x81\x02" + f32(2)
    assert float32_paths(payload) == frozenset({("a", 0), (1, 2)})


def test_float32_paths_skips_what_is_nested_too_deep_to_matter() -> None:
    deep = b"\x91" * 40 + f32(1.0)
    assert float32_paths(b"\x82\xa1x" + deep + b"\xa1y" + f32(2.0)) == frozenset({("y",)})


# ---------------------------------------------------------------------------- shortest_float32


def _shortest_by_brute_force(value: float) -> Decimal:
    """The decimal with the fewest significant digits that reads back as this float32 (the
    nearest of those if several, ties to an even last digit): what Go's
    FormatFloat(x, 'g', -1, 32) and numpy print."""
    exact = Decimal(value)
    for digits in range(1, 10):
        candidates = [
            Context(prec=digits, rounding=rounding).plus(exact)
            for rounding in (ROUND_FLOOR, ROUND_CEILING)
        ]
        good = [c for c in candidates if abs(c) < 2**128 and as_float32(float(c)) == value]
        if good:
            return min(good, key=lambda c: (abs(c - exact), c.as_tuple().digits[-1] % 2))
    raise AssertionError(f"no decimal of up to 9 digits reads back as {value!r}")


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_shortest_float32_is_the_shortest_decimal_that_round_trips(value: float) -> None:
    result = shortest_float32(value)
    assert as_float32(result) == value
    assert Decimal(repr(result)) == _shortest_by_brute_force(value)


POWERS_OF_TWO = [2.0**e for e in range(-149, 128)]


@pytest.mark.parametrize("value", POWERS_OF_TWO, ids=lambda v: f"{v:g}")
def test_shortest_float32_at_powers_of_two(value: float) -> None:
    # The float32 below a power of two is closer than the one above: the nearest decimal of n
    # digits may not read back where the next one up does (1.262177448353619e-29 is
    # 1.2621775e-29, not 1.26217745e-29).
    assert Decimal(repr(shortest_float32(value))) == _shortest_by_brute_force(value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.005, "0.005"),
        (0.1, "0.1"),
        (16777216.0, "16777216.0"),
        (3.4028234663852886e38, "3.4028235e+38"),  # the largest float32
        (1.401298464324817e-45, "1e-45"),  # the smallest
        (1.262177448353619e-29, "1.2621775e-29"),  # a power of two
        (4194303.75, "4194303.8"),  # halfway between two 8-digit decimals: the even one
        (-2.5, "-2.5"),
        (0.0, "0.0"),
    ],
)
def test_shortest_float32_examples(value: float, text: str) -> None:
    assert repr(shortest_float32(as_float32(value))) == text


# Any msgpack document: with floats packed as float32, float32_paths finds exactly their paths.
_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
            | st.floats(width=32, allow_nan=False) | st.text(max_size=40) | st.binary(max_size=300))
_documents = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=20)
    | st.dictionaries(st.text(max_size=10) | st.integers(-1000, 1000), inner, max_size=20),
    max_leaves=60,
)


def _float_paths(obj: object, path: tuple[object, ...] = ()) -> set[tuple[object, ...]]:
    if isinstance(obj, float):
        return {path}
    if isinstance(obj, list):
        return {p for i, item in enumerate(obj) for p in _float_paths(item, (*path, i))}
    if isinstance(obj, dict):
        return {p for key, item in obj.items() for p in _float_paths(item, (*path, key))}
    return set()


@given(_documents)
def test_float32_paths_finds_every_float32_of_any_document(doc: object) -> None:
    payload = msgpack.packb(doc, use_single_float=True, use_bin_type=True)
    assert float32_paths(payload, max_depth=64) == _float_paths(doc)
    assert float32_paths(msgpack.packb(doc, use_bin_type=True)) == frozenset()  # all float64
