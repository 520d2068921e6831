"""decode_birth: a device's declaration of its boot, platform, labels and metrics."""

from __future__ import annotations

from collections.abc import Set
from math import isfinite

from .errors import InvalidBirth, SchemaError, TimestampOutOfRange
from .float32 import float32_paths, shortest_float32
from .frames import Birth, MetricDef, MetricType
from .limits import DEFAULT_LIMITS, Limits
from .names import check_labels, check_metric_name, describe
from .wire import (
    UINT32_MAX,
    check_version,
    get_int,
    get_str,
    get_time_ms,
    get_uint32,
    required,
    unpack_map,
)

_METRIC_TYPES = {t.value: t for t in MetricType}


def decode_birth(
    payload: bytes, *, limits: Limits = DEFAULT_LIMITS, now_ms: int | None = None
) -> Birth:
    obj = unpack_map(payload, limits)
    check_version(obj)
    boot = get_uint32(obj, "b", "boot")
    time_ms = get_time_ms(obj)
    if now_ms is not None and time_ms > now_ms + limits.max_future_skew_ms:
        raise TimestampOutOfRange(
            "timestamp in the future",
            f"birth t = {time_ms} is {time_ms - now_ms} ms ahead of the gateway's clock, "
            f"allowed {limits.max_future_skew_ms} ms",
        )
    platform = get_str(obj, "hw", "platform", limits.max_string_len)
    firmware = get_str(obj, "fw", "firmware", limits.max_string_len)
    raw_labels = obj.get("labels", _NO_LABELS)
    labels = check_labels(raw_labels, limits, "birth labels")
    # uint32 ms is ~49 days: anything slower is not "telemetry" any more.
    interval_ms = get_int(obj, "interval", "interval", 1, UINT32_MAX)
    raw_metrics = required(obj, "metrics", "metric declarations")
    if type(raw_metrics) is not tuple:
        raise SchemaError("wrong type", f"metrics must be an array, got {describe(raw_metrics)}")
    if len(raw_metrics) > limits.max_metrics:
        raise SchemaError(
            "too many metrics", f"{len(raw_metrics)} declared, limit {limits.max_metrics}"
        )
    float32 = _float32_bounds(payload)
    metrics = tuple(
        _metric_def(entry, i, limits, float32.get(i, _NONE)) for i, entry in enumerate(raw_metrics)
    )
    _check_unique(metrics)
    dropped = len(raw_labels) - len(labels)  # empty values (check_labels checked the type)
    return Birth(boot, time_ms, platform, firmware, labels, interval_ms, metrics, dropped)


_NONE: frozenset[int] = frozenset()
_NO_LABELS: list[tuple[str, str]] = []  # an empty map, as the wire decodes one (never mutated)


def _float32_bounds(payload: bytes) -> dict[int, set[int]]:
    """metrics[i] -> indexes j of its bounds[j] sent as float32. Bounds become `le` labels,
    so each keeps the precision it was sent in (see float32.py)."""
    found: dict[int, set[int]] = {}
    if b"\xca" in payload:
        for path in float32_paths(payload):
            if len(path) == 4 and path[0] == "metrics" and path[2] == 3:
                found.setdefault(path[1], set()).add(path[3])
    return found


def _metric_def(
    entry: object, index: int, limits: Limits, sent_as_float32: Set[int]
) -> MetricDef:
    where = f"metrics[{index}]"
    if type(entry) is not tuple or not 3 <= len(entry) <= 4:
        raise SchemaError(
            "bad metric declaration",
            f"{where}: expected [alias, name, type] or [alias, name, type, bounds], "
            f"got {describe(entry)}",
        )
    alias, name, type_name = entry[0], entry[1], entry[2]
    if type(alias) is not int:
        raise SchemaError("wrong type", f"{where} alias must be an int, got {describe(alias)}")
    if not 0 <= alias <= UINT32_MAX:
        raise SchemaError("alias out of range", f"{where} alias = {alias}, allowed 0..{UINT32_MAX}")
    check_metric_name(name, limits, f"{where} name")
    metric_type = _METRIC_TYPES.get(type_name) if type(type_name) is str else None
    if metric_type is None:
        raise InvalidBirth(
            "unknown metric type",
            f"{where} type = {describe(type_name)}; allowed: gauge, counter, histogram",
        )
    if metric_type is not MetricType.HISTOGRAM:
        if len(entry) == 4:
            raise InvalidBirth("unexpected bounds", f"{where}: only histograms take bounds")
        return MetricDef(alias, name, metric_type)
    if len(entry) != 4:
        raise InvalidBirth("missing bounds", f"{where}: a histogram needs its bucket bounds")
    return MetricDef(alias, name, metric_type, _bounds(entry[3], where, limits, sent_as_float32))


def _bounds(
    raw: object, where: str, limits: Limits, sent_as_float32: Set[int]
) -> tuple[float, ...]:
    if type(raw) is not tuple:
        raise SchemaError("wrong type", f"{where} bounds must be an array, got {describe(raw)}")
    if len(raw) > limits.max_buckets:
        raise SchemaError(
            "too many buckets", f"{where}: {len(raw)} bounds, limit {limits.max_buckets}"
        )
    bounds: list[float] = []
    for i, bound in enumerate(raw):
        if type(bound) is not float and type(bound) is not int:
            raise SchemaError("wrong type", f"{where} bounds[{i}] = {describe(bound)}")
        value = float(bound)
        if i in sent_as_float32:
            value = shortest_float32(value)  # 0.004999999888241291 -> 0.005
        if not isfinite(value):
            raise InvalidBirth(
                "bound not finite", f"{where} bounds[{i}] = {value}; +Inf is implicit"
            )
        if bounds and value <= bounds[-1]:
            raise InvalidBirth(
                "bounds not increasing",
                f"{where} bounds[{i}] = {value} after {bounds[-1]}; bounds must strictly increase",
            )
        bounds.append(value)
    return tuple(bounds)


def _check_unique(metrics: tuple[MetricDef, ...]) -> None:
    aliases: set[int] = set()
    names: set[str] = set()
    for i, m in enumerate(metrics):
        if m.alias in aliases:
            raise InvalidBirth("duplicate alias", f"metrics[{i}] alias {m.alias} declared twice")
        if m.name in names:
            raise InvalidBirth("duplicate metric name", f"metrics[{i}] {m.name!r} declared twice")
        aliases.add(m.alias)
        names.add(m.name)
