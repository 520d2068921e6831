"""Prometheus remote-write 1.0 wire format, written by hand: pure functions, no I/O.

The schema (prompb) is tiny::

    WriteRequest { repeated TimeSeries timeseries = 1; }
    TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    Label        { string name = 1; string value = 2; }
    Sample       { double value = 1; int64 timestamp = 2; }   // timestamp in ms

A WriteRequest body is therefore nothing but concatenated ``0x0A <len> <TimeSeries>`` entries.
That is why the encoder works on *entries*: each sample is encoded once into a complete entry
(at ingest time), stored as bytes, and a batch of any size is built with ``b"".join``. The label
part of a TimeSeries is the same for every sample of a series, so callers encode it once and
cache it (see ``gateway.remote_write.series``); per sample only the double and the timestamp
are encoded.

The body is compressed with snappy *block* format (``compress_raw``); receivers answer 400 to
the framed/stream format.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterable, Sequence

import cramjam

__all__ = [
    "LABEL_NAME_TAG",
    "LABEL_TAG",
    "LABEL_VALUE_TAG",
    "PROTOCOL_HEADERS",
    "SAMPLE_HEAD",
    "SAMPLE_TAG",
    "SAMPLE_TIMESTAMP_TAG",
    "SAMPLE_VALUE_TAG",
    "STALE_NAN",
    "TIMESERIES_TAG",
    "LabelValidationError",
    "build_body",
    "compress",
    "decode_write_request",
    "decompress",
    "encode_entry",
    "encode_entry_multi",
    "encode_labels",
    "encode_varint",
    "is_stale_nan",
    "split_entries",
    "validate_labels",
]

STALE_NAN: float = struct.unpack("<d", (0x7FF0000000000002).to_bytes(8, "little"))[0]
"""Prometheus's staleness marker: a NaN with this exact bit pattern ends a series."""

# The WriteRequest's field tags, (field number << 3) | wire type (prompb/remote.proto and
# types.proto). The one home of the wire constants: series.py, the frame compiler and the
# forwarders' client take them from here.
TIMESERIES_TAG = b"\x0a"  # WriteRequest.timeseries = 1, length-delimited
LABEL_TAG = b"\x0a"  # TimeSeries.labels = 1, length-delimited
SAMPLE_TAG = b"\x12"  # TimeSeries.samples = 2, length-delimited
LABEL_NAME_TAG = b"\x0a"  # Label.name = 1, length-delimited
LABEL_VALUE_TAG = b"\x12"  # Label.value = 2, length-delimited
SAMPLE_VALUE_TAG = 0x09  # Sample.value = 1, 64-bit
SAMPLE_TIMESTAMP_TAG = 0x10  # Sample.timestamp = 2, varint
# A Sample up to its timestamp's varint: value tag, the double, timestamp tag. Hot loops bind
# the two tags to locals (as fast as the literals they replace).
SAMPLE_HEAD = struct.Struct("<BdB")
# The headers remote-write 1.0 requires of every request (and a receiver checks).
PROTOCOL_HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}

_UINT64 = 1 << 64
_SMALL_VARINTS = tuple(bytes((i,)) for i in range(0x80))
_DOUBLE = struct.Struct("<d")


def encode_varint(n: int) -> bytes:
    """Base-128 varint. Negative numbers are int64 two's complement (always 10 bytes)."""
    if 0 <= n < 0x80:
        return _SMALL_VARINTS[n]
    if n < 0:
        if n < -(1 << 63):
            raise ValueError(f"{n} does not fit in int64")
        n += _UINT64
    elif n >= _UINT64:
        raise ValueError(f"{n} does not fit in 64 bits")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len_prefixed(tag: bytes, payload: bytes) -> bytes:
    return tag + encode_varint(len(payload)) + payload


def encode_labels(labels: Iterable[tuple[str, str]]) -> bytes:
    """The repeated ``TimeSeries.labels`` fields, in the order given.

    Receivers expect labels sorted by name (``sorted()`` puts ``__name__`` first); this function
    does not sort or validate, see ``validate_labels``.
    """
    out = []
    for name, value in labels:
        label = (_len_prefixed(LABEL_NAME_TAG, name.encode())
                 + _len_prefixed(LABEL_VALUE_TAG, value.encode()))
        out.append(_len_prefixed(LABEL_TAG, label))
    return b"".join(out)


def _sample(value: float, timestamp_ms: int) -> bytes:
    head = SAMPLE_HEAD.pack(SAMPLE_VALUE_TAG, value, SAMPLE_TIMESTAMP_TAG)
    return head + encode_varint(timestamp_ms)


def encode_entry(label_bytes: bytes, value: float, timestamp_ms: int) -> bytes:
    """One complete ``WriteRequest.timeseries`` entry holding a single sample."""
    sample = _sample(value, timestamp_ms)
    # a Sample is at most 1 + 8 + 1 + 10 = 20 bytes, so its length is a one-byte varint
    series = label_bytes + SAMPLE_TAG + _SMALL_VARINTS[len(sample)] + sample
    return TIMESERIES_TAG + encode_varint(len(series)) + series


def encode_entry_multi(label_bytes: bytes, samples: Sequence[tuple[float, int]]) -> bytes:
    """One entry carrying several samples (value, timestamp_ms) of the same series, in order."""
    parts = [label_bytes]
    for value, timestamp_ms in samples:
        sample = _sample(value, timestamp_ms)
        parts.append(SAMPLE_TAG + _SMALL_VARINTS[len(sample)] + sample)
    series = b"".join(parts)
    return TIMESERIES_TAG + encode_varint(len(series)) + series


def entry_timestamp(entry: bytes) -> int:
    """The timestamp of an entry's last sample, read from its tail: every entry this module
    encodes ends with ``0x10 <varint timestamp>``, and the tag byte 0x10 ends the scan."""
    end = len(entry)
    start = end - 1
    while entry[start - 1] & 0x80:
        start -= 1
    n = 0
    for byte in reversed(entry[start:end]):
        n = (n << 7) | (byte & 0x7F)
    return n - _UINT64 if n >= 1 << 63 else n


def build_body(entries: Iterable[bytes]) -> bytes:
    """An uncompressed WriteRequest made of pre-encoded entries."""
    return b"".join(entries)


def compress(body: bytes) -> bytes:
    """Snappy block format, as remote-write requires (the framed format is refused)."""
    return bytes(cramjam.snappy.compress_raw(body))


def decompress(data: bytes) -> bytes:
    try:
        return bytes(cramjam.snappy.decompress_raw(data))
    except cramjam.DecompressionError as exc:
        raise ValueError(f"not a snappy block: {exc}") from exc


# ---------------------------------------------------------------------------------- decoding


def _read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ValueError("truncated varint")
        if shift >= 70:
            raise ValueError("varint longer than 10 bytes")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if result >= _UINT64:
                raise ValueError("varint overflows 64 bits")
            return result, pos
        shift += 7


def _fields(buf: bytes, pos: int, end: int) -> Iterable[tuple[int, int, int | bytes | float]]:
    """Yield (field number, wire type, value) of one message; LEN values are bytes slices."""
    while pos < end:
        key, pos = _read_varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ValueError("field number 0")
        value: int | bytes | float
        if wire == 0:
            value, pos = _read_varint(buf, pos, end)
        elif wire == 1:
            if pos + 8 > end:
                raise ValueError("truncated 64-bit field")
            value = _DOUBLE.unpack_from(buf, pos)[0]
            pos += 8
        elif wire == 2:
            size, pos = _read_varint(buf, pos, end)
            if pos + size > end:
                raise ValueError("length-delimited field runs past its message")
            value = buf[pos : pos + size]
            pos += size
        elif wire == 5:
            if pos + 4 > end:
                raise ValueError("truncated 32-bit field")
            value = buf[pos : pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire} (field {field})")
        yield field, wire, value


def _expect(wire: int, expected: int, what: str) -> None:
    if wire != expected:
        raise ValueError(f"{what}: wire type {wire}, expected {expected}")


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} is not UTF-8") from exc


def _decode_label(raw: bytes) -> tuple[str, str]:
    name = value = ""
    for field, wire, val in _fields(raw, 0, len(raw)):
        if field in (1, 2):
            _expect(wire, 2, "Label field")
            assert isinstance(val, bytes)
            if field == 1:
                name = _utf8(val, "label name")
            else:
                value = _utf8(val, "label value")
    return name, value


def _decode_sample(raw: bytes) -> tuple[float, int]:
    value = 0.0
    timestamp = 0
    for field, wire, val in _fields(raw, 0, len(raw)):
        if field == 1:
            _expect(wire, 1, "Sample.value")
            assert isinstance(val, float)
            value = val
        elif field == 2:
            _expect(wire, 0, "Sample.timestamp")
            assert isinstance(val, int)
            timestamp = val - _UINT64 if val >= 1 << 63 else val
    return value, timestamp


def decode_write_request(body: bytes) -> list[tuple[dict[str, str], list[tuple[float, int]]]]:
    """Decode an uncompressed WriteRequest into (labels, [(value, timestamp_ms)]) per series.

    Unknown fields (metadata, exemplars, histograms) are skipped. Raises ValueError on bytes
    that are not a well-formed WriteRequest.
    """
    result: list[tuple[dict[str, str], list[tuple[float, int]]]] = []
    for field, wire, raw in _fields(body, 0, len(body)):
        if field != 1:
            continue
        _expect(wire, 2, "WriteRequest.timeseries")
        assert isinstance(raw, bytes)
        labels: dict[str, str] = {}
        samples: list[tuple[float, int]] = []
        for f, w, v in _fields(raw, 0, len(raw)):
            if f == 1:
                _expect(w, 2, "TimeSeries.labels")
                assert isinstance(v, bytes)
                name, value = _decode_label(v)
                if name in labels:
                    raise ValueError(f"duplicate label name {name!r}")
                labels[name] = value
            elif f == 2:
                _expect(w, 2, "TimeSeries.samples")
                assert isinstance(v, bytes)
                samples.append(_decode_sample(v))
        result.append((labels, samples))
    return result


def split_entries(body: bytes) -> list[bytes]:
    """Cut a WriteRequest into its timeseries entries; ``build_body`` of the result is ``body``.

    Only bodies made of timeseries entries are accepted (anything else raises ValueError), so
    that no bytes are silently lost in a split/join round trip.
    """
    entries: list[bytes] = []
    pos, end = 0, len(body)
    while pos < end:
        start = pos
        if body[pos] != 0x0A:
            raise ValueError(f"byte {pos}: expected a timeseries entry (0x0a), got {body[pos]:#x}")
        size, pos = _read_varint(body, pos + 1, end)
        if pos + size > end:
            raise ValueError(f"byte {start}: timeseries entry runs past the body")
        pos += size
        entries.append(body[start:pos])
    return entries


# -------------------------------------------------------------------------------- validation


class LabelValidationError(ValueError):
    """A label set a receiver would refuse (or, for duplicates, answer 500 to)."""


_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def validate_labels(pairs: Sequence[tuple[str, str]]) -> None:
    """Check a complete series label set: ``__name__`` present and a valid metric name, label
    names valid, strictly sorted by name (hence unique), values non-empty UTF-8.

    Prometheus 2.42 answers 500 (i.e. "retry forever") to duplicate label names, and treats an
    empty value as an absent label, so both are refused here before anything is sent.
    """
    previous: str | None = None
    has_name = False
    for name, value in pairs:
        if not _LABEL_NAME.fullmatch(name):
            raise LabelValidationError(f"invalid label name {name!r}")
        if previous is not None and name <= previous:
            problem = "duplicate" if name == previous else "unsorted"
            raise LabelValidationError(f"{problem} label name {name!r} (after {previous!r})")
        previous = name
        if not value:
            raise LabelValidationError(f"label {name!r} has an empty value")
        if name == "__name__":
            has_name = True
            if not _METRIC_NAME.fullmatch(value):
                raise LabelValidationError(f"invalid metric name {value!r}")
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            raise LabelValidationError(f"label {name!r} value is not valid UTF-8") from exc
    if not has_name:
        raise LabelValidationError("label set has no __name__")


def is_stale_nan(value: float) -> bool:
    """True only for the exact staleness-marker bit pattern (other NaNs are ordinary values)."""
    return math.isnan(value) and _DOUBLE.pack(value) == _DOUBLE.pack(STALE_NAN)
