"""Bytes -> one msgpack map, safely; and typed reads of its top-level fields.

msgpack's C unpacker bounds nesting itself (StackError past ~1024 levels) and, with the
max_*_len limits below, refuses a container header that claims more entries than the payload
could possibly hold before allocating anything for it.

Maps are decoded as lists of (key, value) pairs (`object_pairs_hook=list`, done in C), and
turned into dicts by the code that reads them: the payload itself here (`map_of`), label maps
in names.check_labels; a map in a field the codec ignores is ignored whole. A map the codec
reads that repeats a key is refused ("duplicate map key"): msgpack can encode one, and decoders
disagree on which value wins (msgpack-python's dicts keep the last, others the first), so
reading either would be a guess. Seen as pairs, a repeat costs one len() to notice, where a
Python hook per map would cost ~0.2 µs a map (a 20-sample frame with labels: +20 %).
"""

from __future__ import annotations

from typing import Any, NoReturn

import msgpack

from .errors import FrameTooLarge, MalformedPayload, SchemaError, UnsupportedVersion
from .frames import PROTOCOL_VERSION
from .limits import Limits
from .names import describe, duplicate_key

UINT32_MAX = 0xFFFF_FFFF
INT64_MAX = 2**63 - 1

Fields = dict[Any, Any]


def unpack_map(payload: bytes, limits: Limits) -> Fields:
    size = len(payload)
    if size > limits.max_payload_bytes:
        raise FrameTooLarge("frame too large", f"{size} bytes, limit {limits.max_payload_bytes}")
    if size == 0:
        raise MalformedPayload("empty payload", "a frame is one msgpack map, got 0 bytes")
    try:
        obj = msgpack.unpackb(
            payload,
            raw=False,
            use_list=False,  # tuples: array map keys stay hashable, and are simply ignored
            strict_map_key=False,
            # Each entry takes at least one byte (a map entry two), so nothing longer can be real.
            max_str_len=size,
            max_bin_len=size,
            max_ext_len=size,
            max_array_len=size,
            max_map_len=size // 2,
            object_pairs_hook=list,  # maps as [(key, value), ...]: see map_of
        )
    except Exception as exc:  # the C unpacker raises several unrelated types; map them all once
        _raise_malformed(exc, size)
    if type(obj) is not list:
        raise MalformedPayload("not a map", f"a frame is one msgpack map, got {describe(obj)}")
    return map_of(obj)


def map_of(pairs: list[tuple[Any, Any]]) -> Fields:
    """A decoded msgpack map (its pairs) as a dict; refused if it repeats a key."""
    try:
        obj = dict(pairs)
    except TypeError as exc:  # a key that is itself a map (a list here)
        raise MalformedPayload("unhashable map key", f"a map key must be a scalar: {exc}") from exc
    if len(obj) != len(pairs):
        raise duplicate_key(pairs)
    return obj


def _raise_malformed(exc: Exception, size: int) -> NoReturn:
    text = str(exc)
    if isinstance(exc, msgpack.StackError):
        reason = "too deep"
    elif isinstance(exc, msgpack.ExtraData):
        reason = "trailing data"
    elif isinstance(exc, msgpack.FormatError):
        reason = "not msgpack"
    elif isinstance(exc, UnicodeDecodeError):
        reason = "invalid utf-8"
    elif isinstance(exc, TypeError):
        reason = "unhashable map key"
    elif "incomplete input" in text:
        reason = "truncated"
    elif "exceeds max_" in text:
        reason = "container too large"
    else:
        reason = "not msgpack"
    detail = f"{size} bytes: {text[:200]}" if text else f"{size} bytes"
    raise MalformedPayload(reason, detail) from exc


def check_version(obj: Fields) -> None:
    v = obj.get("v", _MISSING)
    if v is _MISSING:
        raise SchemaError("missing field", "v (protocol version) is required")
    if type(v) is not int or v != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            "unsupported version", f"v = {describe(v)}; this codec speaks v {PROTOCOL_VERSION}"
        )


def required(obj: Fields, key: str, what: str) -> Any:
    value = obj.get(key, _MISSING)
    if value is _MISSING:
        raise SchemaError("missing field", f"{key} ({what}) is required")
    return value


def get_int(obj: Fields, key: str, what: str, low: int, high: int) -> int:
    value = required(obj, key, what)
    if type(value) is not int:
        raise SchemaError("wrong type", f"{key} ({what}) must be an int, got {describe(value)}")
    if not low <= value <= high:
        raise SchemaError(f"{what} out of range", f"{key} = {value}, allowed {low}..{high}")
    return value


def get_uint32(obj: Fields, key: str, what: str) -> int:
    return get_int(obj, key, what, 0, UINT32_MAX)


def get_time_ms(obj: Fields, key: str = "t") -> int:
    return get_int(obj, key, "time", 0, INT64_MAX)


def get_str(obj: Fields, key: str, what: str, max_len: int) -> str:
    value = required(obj, key, what)
    if type(value) is not str:
        raise SchemaError("wrong type", f"{key} ({what}) must be a str, got {describe(value)}")
    if not value or len(value) > max_len:
        raise SchemaError(
            f"{what} out of range", f"{key} has {len(value)} chars, allowed 1..{max_len}"
        )
    return value


def get_bool(obj: Fields, key: str, what: str, default: bool | None = None) -> bool:
    value = obj.get(key, _MISSING)
    if value is _MISSING:
        if default is None:
            raise SchemaError("missing field", f"{key} ({what}) is required")
        return default
    if value is not True and value is not False:
        raise SchemaError("wrong type", f"{key} ({what}) must be a bool, got {describe(value)}")
    return value


class _Missing:
    __slots__ = ()


_MISSING: Any = _Missing()
