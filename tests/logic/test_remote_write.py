"""Wire-format tests for gateway.remote_write.wire.

Two independent paths check the encoder: byte strings written out by hand from the prompb
schema (tags 0x0A/0x12/0x09/0x10), and the module's own decoder under Hypothesis round trips.
The e2e tests then prove the bytes against real Prometheus and VictoriaMetrics.
"""

from __future__ import annotations

import math
import struct

import cramjam
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.remote_write.wire import (
    STALE_NAN,
    LabelValidationError,
    build_body,
    compress,
    decode_write_request,
    decompress,
    encode_entry,
    encode_entry_multi,
    encode_labels,
    encode_varint,
    is_stale_nan,
    split_entries,
    validate_labels,
)

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


def bits(value: float) -> bytes:
    return struct.pack("<d", value)


# ------------------------------------------------------------------------ hand-built examples


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "00"),
        (1, "01"),
        (127, "7f"),
        (128, "8001"),
        (300, "ac02"),
        (16383, "ff7f"),
        (16384, "808001"),
        (1_700_000_000_000, "80d095ffbc31"),
        (INT64_MAX, "ffffffffffffffff7f"),
        (-1, "ffffffffffffffffff01"),
        (-2, "feffffffffffffffff01"),
        (INT64_MIN, "80808080808080808001"),
    ],
)
def test_varint_matches_protobuf_encoding(n: int, expected: str) -> None:
    assert encode_varint(n).hex() == expected


@pytest.mark.parametrize("n", [INT64_MIN - 1, 1 << 64])
def test_varint_refuses_numbers_outside_64_bits(n: int) -> None:
    with pytest.raises(ValueError):
        encode_varint(n)


def wire(*parts: str | bytes) -> bytes:
    """Bytes from hex fragments and raw strings, so each field can be written on its own line."""
    return b"".join(bytes.fromhex(p) if isinstance(p, str) else p for p in parts)


def test_single_sample_entry_is_byte_exact() -> None:
    # TimeSeries{labels: [{__name__: up}, {job: a}], samples: [{value: 1.0, timestamp: 1000}]}
    expected = wire(
        "0a 28",  # WriteRequest.timeseries, 40 bytes
        "0a 0e",  # TimeSeries.labels, 14 bytes
        "0a 08", b"__name__", "12 02", b"up",  # Label.name, Label.value
        "0a 08",
        "0a 03", b"job", "12 01", b"a",
        "12 0c",  # TimeSeries.samples, 12 bytes
        "09", "00 00 00 00 00 00 f0 3f",  # Sample.value = 1.0, little-endian double
        "10", "e8 07",  # Sample.timestamp = 1000
    )  # fmt: skip
    labels = encode_labels([("__name__", "up"), ("job", "a")])
    assert encode_entry(labels, 1.0, 1000) == expected


def test_negative_timestamp_is_ten_byte_twos_complement() -> None:
    expected = wire(
        "0a 25",  # 15 bytes of label + 22 bytes of sample
        "0a 0d", "0a 08", b"__name__", "12 01", b"x",
        "12 14", "09", "00 00 00 00 00 00 00 00", "10", "ff ff ff ff ff ff ff ff ff 01",
    )  # fmt: skip
    assert encode_entry(encode_labels([("__name__", "x")]), 0.0, -1) == expected


def test_multi_sample_entry_is_byte_exact() -> None:
    expected = wire(
        "0a 29",
        "0a 0d", "0a 08", b"__name__", "12 01", b"x",
        "12 0b", "09", "00 00 00 00 00 00 00 40", "10", "01",  # 2.0 @ 1
        "12 0b", "09", "00 00 00 00 00 00 08 c0", "10", "02",  # -3.0 @ 2
    )  # fmt: skip
    assert encode_entry_multi(encode_labels([("__name__", "x")]), [(2.0, 1), (-3.0, 2)]) == expected


def test_long_and_non_ascii_labels_use_multibyte_lengths() -> None:
    value = "é" * 100  # 200 UTF-8 bytes: needs a two-byte length varint
    label = b"\x0a\x01k\x12\xc8\x01" + value.encode()
    assert encode_labels([("k", value)]) == b"\x0a" + encode_varint(len(label)) + label
    assert len(label) == 206 and encode_varint(206) == b"\xce\x01"


def test_stale_nan_has_prometheus_bit_pattern_on_the_wire() -> None:
    entry = encode_entry(encode_labels([("__name__", "x")]), STALE_NAN, 5)
    assert bytes.fromhex("020000000000f07f") in entry
    ((_, [(value, ts)]),) = decode_write_request(entry)
    assert is_stale_nan(value) and ts == 5
    assert not is_stale_nan(math.nan)
    assert not is_stale_nan(1.0)


# ------------------------------------------------------------------------------ round trips

label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,20}", fullmatch=True)
label_values = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40)
label_sets = st.dictionaries(label_names, label_values, min_size=1, max_size=8)
doubles = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.just(-0.0),
    st.just(STALE_NAN),
    st.integers(0, (1 << 64) - 1).map(lambda b: struct.unpack("<d", b.to_bytes(8, "little"))[0]),
)
timestamps = st.one_of(
    st.integers(INT64_MIN, INT64_MAX),
    st.integers(-(10**13), 10**13),
    st.sampled_from([0, -1, INT64_MIN, INT64_MAX, 1 << 35, (1 << 42) - 1]),
)


@given(label_sets, st.lists(st.tuples(doubles, timestamps), min_size=1, max_size=5))
def test_entries_round_trip_through_the_decoder(
    labels: dict[str, str], samples: list[tuple[float, int]]
) -> None:
    label_bytes = encode_labels(sorted(labels.items()))
    singles = [encode_entry(label_bytes, v, t) for v, t in samples]
    multi = encode_entry_multi(label_bytes, samples)

    decoded = decode_write_request(build_body(singles))
    assert [lbls for lbls, _ in decoded] == [labels] * len(samples)
    assert [(bits(v), t) for _, [(v, t)] in decoded] == [(bits(v), t) for v, t in samples]

    ((multi_labels, multi_samples),) = decode_write_request(multi)
    assert multi_labels == labels
    assert [(bits(v), t) for v, t in multi_samples] == [(bits(v), t) for v, t in samples]


@given(st.lists(st.tuples(label_sets, doubles, timestamps), max_size=6))
def test_split_entries_inverts_build_body(series: list[tuple[dict[str, str], float, int]]) -> None:
    entries = [encode_entry(encode_labels(sorted(lb.items())), v, t) for lb, v, t in series]
    body = build_body(entries)
    assert split_entries(body) == entries
    assert build_body(split_entries(body)) == body


@given(st.binary(max_size=64))
def test_decoder_raises_only_value_error_on_garbage(data: bytes) -> None:
    try:
        decode_write_request(data)
    except ValueError:
        pass


@pytest.mark.parametrize(
    "body",
    [
        b"\x0a\x05\x0a\x03",  # entry shorter than its declared length
        b"\x0a",  # truncated length
        b"\x0b",  # wire type 3 (groups) unsupported
        b"\x0a\x02\x10\x01",  # TimeSeries.labels as a varint
        b"\x0a\x04\x12\x02\x09\x00",  # truncated double
        b"\x08" + b"\xff" * 11,  # varint longer than 10 bytes
        b"\x0a\x0a\x0a\x03\x0a\x01k\x0a\x03\x0a\x01k",  # duplicate label name
        b"\x0a\x06\x0a\x04\x0a\x02\xff\xfe",  # label name not UTF-8
    ],
)
def test_decoder_rejects_malformed_bodies(body: bytes) -> None:
    with pytest.raises(ValueError):
        decode_write_request(body)


def test_decoder_skips_unknown_fields() -> None:
    entry = encode_entry(encode_labels([("__name__", "x")]), 1.0, 2)
    metadata = b"\x1a\x02\x08\x01"  # WriteRequest.metadata{type: 1}
    assert decode_write_request(metadata + entry) == [({"__name__": "x"}, [(1.0, 2)])]


def test_split_entries_refuses_foreign_fields_and_truncation() -> None:
    entry = encode_entry(encode_labels([("__name__", "x")]), 1.0, 2)
    with pytest.raises(ValueError, match="expected a timeseries entry"):
        split_entries(entry + b"\x1a\x00")
    with pytest.raises(ValueError, match="runs past"):
        split_entries(entry[:-1])


# ------------------------------------------------------------------------------- compression


@given(st.binary(max_size=4096))
def test_compress_is_raw_snappy_block(body: bytes) -> None:
    compressed = compress(body)
    assert isinstance(compressed, bytes)
    assert bytes(cramjam.snappy.decompress_raw(compressed)) == body
    assert decompress(compressed) == body
    assert b"\xff\x06\x00\x00sNaPpY" not in compressed


def test_framed_snappy_is_not_what_compress_produces() -> None:
    body = build_body([encode_entry(encode_labels([("__name__", "x")]), 1.0, 2)] * 50)
    framed = bytes(cramjam.snappy.compress(body))
    assert framed.startswith(b"\xff\x06\x00\x00sNaPpY")
    assert compress(body) != framed
    with pytest.raises(ValueError, match="snappy"):
        decompress(b"\xff\xff\xff\xff garbage")


# -------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "pairs",
    [
        [("__name__", "up")],
        [("__name__", "ns:metric_total"), ("a", "1"), ("b_2", "x y é")],
        [("__name__", "_x"), ("_private", "v")],
    ],
)
def test_valid_label_sets_pass(pairs: list[tuple[str, str]]) -> None:
    validate_labels(pairs)


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("job", "a")], "no __name__"),
        ([("__name__", "1up")], "invalid metric name"),
        ([("__name__", "up-time")], "invalid metric name"),
        ([("__name__", "up"), ("a:b", "v")], "invalid label name"),
        ([("__name__", "up"), ("", "v")], "invalid label name"),
        ([("__name__", "up"), ("1a", "v")], "invalid label name"),
        ([("__name__", "up"), ("job", "a"), ("job", "b")], "duplicate"),
        ([("__name__", "up"), ("zone", "a"), ("job", "b")], "unsorted"),
        ([("job", "b"), ("__name__", "up")], "unsorted"),
        ([("__name__", "up"), ("job", "")], "empty value"),
        ([("__name__", "up"), ("job", "\udc80")], "UTF-8"),
    ],
)
def test_invalid_label_sets_are_refused(pairs: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(LabelValidationError, match=message):
        validate_labels(pairs)


def test_label_validation_error_is_a_value_error() -> None:
    assert issubclass(LabelValidationError, ValueError)
