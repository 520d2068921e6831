"""An independent reader of Prometheus remote-write 1.0 bodies, written from the spec's schema.

It shares no code with `gateway.remote_write.wire`: snappy *block* decoding comes from cramjam
directly and the protobuf reader below is ours, so a bug in the gateway's own decoder cannot
hide the same bug in its encoder. It keeps what the spec's rules talk about and a decoder
would normally throw away: the labels in the order they were sent (sorting, uniqueness), and
each value's raw 64 bits (the staleness NaN is one exact bit pattern).

    WriteRequest { repeated TimeSeries timeseries = 1; }
    TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    Label        { string name = 1; string value = 2; }
    Sample       { double value = 1; int64 timestamp = 2; }
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import cramjam

STALE_NAN_BITS = 0x7FF0000000000002  # the spec's staleness marker, nothing else is one

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class WireError(ValueError):
    """The body is not a remote-write 1.0 WriteRequest."""


@dataclass(frozen=True, slots=True)
class Sample:
    bits: int  # the double's raw IEEE-754 bits, as sent
    timestamp_ms: int

    @property
    def value(self) -> float:
        return float(struct.unpack("<d", self.bits.to_bytes(8, "little"))[0])

    @property
    def is_stale_marker(self) -> bool:
        return self.bits == STALE_NAN_BITS


@dataclass(frozen=True, slots=True)
class Series:
    labels: tuple[tuple[str, str], ...]  # in the order sent
    samples: tuple[Sample, ...]
    unknown_fields: tuple[int, ...] = ()  # field numbers beyond labels/samples (none in 1.0)

    @property
    def name(self) -> str:
        return dict(self.labels).get("__name__", "")

    def key(self) -> tuple[tuple[str, str], ...]:
        """The series' identity: its labels as a set, sorted."""
        return tuple(sorted(self.labels))

    def label(self, name: str) -> str | None:
        return dict(self.labels).get(name)


def decompress_block(body: bytes) -> bytes:
    """Snappy block format; the framed (stream) format fails here, as at real receivers."""
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except Exception as exc:  # cramjam raises its own DecompressionError
        raise WireError(f"not snappy block format: {exc}") from exc


def decode_body(compressed: bytes) -> list[Series]:
    return decode_write_request(decompress_block(compressed))


def decode_write_request(raw: bytes) -> list[Series]:
    out = []
    for field, wire, value in _fields(raw):
        if field != 1 or wire != _LEN:
            raise WireError(f"WriteRequest: unexpected field {field} (wire type {wire})")
        assert isinstance(value, bytes)
        out.append(_series(value))
    return out


def _series(raw: bytes) -> Series:
    labels: list[tuple[str, str]] = []
    samples: list[Sample] = []
    unknown: list[int] = []
    for field, wire, value in _fields(raw):
        if field == 1 and wire == _LEN:
            assert isinstance(value, bytes)
            labels.append(_label(value))
        elif field == 2 and wire == _LEN:
            assert isinstance(value, bytes)
            samples.append(_sample(value))
        else:
            unknown.append(field)
    return Series(tuple(labels), tuple(samples), tuple(unknown))


def _label(raw: bytes) -> tuple[str, str]:
    name = value = ""
    for field, wire, data in _fields(raw):
        if wire != _LEN or field not in (1, 2):
            raise WireError(f"Label: unexpected field {field} (wire type {wire})")
        assert isinstance(data, bytes)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError(f"Label: field {field} is not UTF-8") from exc
        if field == 1:
            name = text
        else:
            value = text
    return name, value


def _sample(raw: bytes) -> Sample:
    bits = 0
    timestamp = 0
    for field, wire, data in _fields(raw):
        if field == 1 and wire == _I64:
            assert isinstance(data, int)
            bits = data
        elif field == 2 and wire == _VARINT:
            assert isinstance(data, int)
            timestamp = data - (1 << 64) if data >= 1 << 63 else data  # int64
        else:
            raise WireError(f"Sample: unexpected field {field} (wire type {wire})")
    return Sample(bits, timestamp)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, int or bytes) of each field of one message, in order."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
            yield field, wire, value
        elif wire in (_I64, _I32):
            width = 8 if wire == _I64 else 4
            if pos + width > len(buf):
                raise WireError("truncated fixed-width field")
            yield field, wire, int.from_bytes(buf[pos:pos + width], "little")
            pos += width
        elif wire == _LEN:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise WireError("truncated length-delimited field")
            yield field, wire, buf[pos:pos + length]
            pos += length
        else:
            raise WireError(f"unsupported wire type {wire}")
