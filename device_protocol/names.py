"""Metric names, label names and label values, as the Prometheus receivers accept them.

Devices repeat the same few names in every frame, so names that passed the regex are kept in a
small set and not checked again. The sets are bounded (cleared when full) so a device inventing
names cannot grow them without limit. Lengths are checked on every use, because they depend on
the Limits in force.
"""

from __future__ import annotations

import re

from .errors import InvalidName, MalformedPayload, SchemaError
from .frames import Labels
from .limits import Limits

METRIC_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Labels the gateway sets itself (device_id), that histograms use (le), or that Prometheus
# reserves (__name__ and friends).
RESERVED_LABEL_NAMES = frozenset({"device_id", "le"})

_CACHE_MAX = 10_000
_metric_names_ok: set[str] = set()
_label_names_ok: set[str] = set()


def describe(value: object) -> str:
    """Short, bounded description of a decoded value for error details."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return f"bool {value}"
    if isinstance(value, int | float):
        return f"{type(value).__name__} {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:40] + "..."
        return f"str {shown!r}"
    if isinstance(value, bytes):
        return f"bin of {len(value)} bytes"
    if isinstance(value, tuple):
        return f"array of {len(value)}"
    if isinstance(value, list | dict):  # the codec decodes maps as lists of pairs (wire.py)
        return f"map of {len(value)}"
    return type(value).__name__


# The gateway writes these families per device itself (gateway/fleet/series.py, the info
# series): a device writing into them would make one series with two writers and two clocks.
RESERVED_METRIC_PREFIX = "fleet_device"


def check_metric_name(name: object, limits: Limits, where: str) -> str:
    if type(name) is not str:
        raise SchemaError("wrong type", f"{where}: metric name must be a str, got {describe(name)}")
    if len(name) > limits.max_name_len:
        raise InvalidName(
            "invalid metric name", f"{where}: {len(name)} chars, limit {limits.max_name_len}"
        )
    if name not in _metric_names_ok:
        if METRIC_NAME_RE.fullmatch(name) is None:
            raise InvalidName(
                "invalid metric name",
                f"{where}: {describe(name)} must match {METRIC_NAME_RE.pattern}",
            )
        if name.startswith(RESERVED_METRIC_PREFIX):
            raise InvalidName(
                "reserved metric name",
                f"{where}: {name!r}: {RESERVED_METRIC_PREFIX}* (fleet_device_up, "
                "fleet_device_info, fleet_devices, ...) are the gateway's own series",
            )
        _remember(_metric_names_ok, name)
    return name


def check_label_name(name: object, limits: Limits, where: str) -> str:
    if type(name) is not str:
        raise InvalidName("invalid label name", f"{where}: must be a str, got {describe(name)}")
    if len(name) > limits.max_name_len:
        raise InvalidName(
            "invalid label name", f"{where}: {len(name)} chars, limit {limits.max_name_len}"
        )
    if name not in _label_names_ok:
        if LABEL_NAME_RE.fullmatch(name) is None:
            raise InvalidName(
                "invalid label name",
                f"{where}: {describe(name)} must match {LABEL_NAME_RE.pattern}",
            )
        if name.startswith("__") or name in RESERVED_LABEL_NAMES:
            raise InvalidName(
                "reserved label name",
                f"{where}: {name!r} is set by the gateway or reserved (__*, device_id, le)",
            )
        _remember(_label_names_ok, name)
    return name


def duplicate_key(pairs: list[tuple[object, object]]) -> MalformedPayload:
    """The error for a decoded map (its pairs) known to repeat a key."""
    seen: set[object] = set()
    for key, _ in pairs:
        if key in seen:
            return MalformedPayload(
                "duplicate map key", f"key {describe(key)} appears more than once in one map")
        seen.add(key)
    return MalformedPayload("duplicate map key", "a key appears more than once in one map")


def check_labels(raw: object, limits: Limits, where: str) -> Labels:
    """A decoded msgpack map of labels (its pairs, see wire.py) -> sorted (name, value) pairs.

    A label with an empty value is left out (for Prometheus {a=""} *is* "no label a"): the
    caller sees it as fewer pairs than the map had entries, and counts it.
    """
    if type(raw) is not list:
        raise SchemaError("wrong type", f"{where}: labels must be a map, got {describe(raw)}")
    if not raw:
        return ()
    if len(raw) > limits.max_labels:
        raise SchemaError(
            "too many labels", f"{where}: {len(raw)} labels, limit {limits.max_labels}"
        )
    max_value_len = limits.max_label_value_len
    max_name_len = limits.max_name_len
    empty = 0
    for name, value in raw:
        if type(name) is not str or name not in _label_names_ok or len(name) > max_name_len:
            check_label_name(name, limits, where)
        if type(value) is not str or not value or len(value) > max_value_len:
            if value == "":
                empty += 1
                continue
            raise InvalidName(
                "invalid label value",
                f"{where} {name!r}: {describe(value)}; a str of at most "
                f"{max_value_len} chars is required",
            )
    if len(raw) > 1 and len(dict(raw)) != len(raw):
        raise duplicate_key(raw)
    # Names are unique str, so sorting never compares the values.
    if empty:
        return tuple(sorted((name, value) for name, value in raw if value))
    return tuple(sorted(raw))


def _remember(cache: set[str], name: str) -> None:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache.add(name)
