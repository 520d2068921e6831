"""decode_telemetry: the gateway's hot path (thousands of frames/s, ~20 samples each).

Valid frames go through straight-line checks: no per-sample helper calls, regex or exceptions
(names already seen skip the regex, see names.py). The moment anything looks off, a slow path
(_bad_header, _bad_sample) works out the precise error; both paths check the same rules.
"""

from __future__ import annotations

from math import isfinite
from typing import NoReturn

from .errors import ProtocolError, SchemaError, TimestampOutOfRange
from .frames import (
    PROTOCOL_VERSION,
    HistogramValue,
    Labels,
    RawSample,
    RawTelemetry,
    SampleRow,
    TelemetryRows,
)
from .limits import DEFAULT_LIMITS, Limits
from .names import _metric_names_ok, check_labels, check_metric_name, describe
from .twins import HistogramValueTwin, RawSampleTwin, RawTelemetryTwin
from .wire import (
    INT64_MAX,
    UINT32_MAX,
    Fields,
    check_version,
    get_bool,
    get_time_ms,
    get_uint32,
    required,
    unpack_map,
)


def decode_telemetry(
    payload: bytes, *, limits: Limits = DEFAULT_LIMITS, now_ms: int | None = None
) -> RawTelemetry:
    boot, seq, time_ms, rows, historical, dropped_labels = _decode(payload, limits, now_ms)
    samples = []
    for metric, value, dt, labels in rows:
        # twins.py: a real RawSample, built ~4x faster than by the frozen __init__.
        raw = RawSampleTwin(metric, value, dt, labels)
        raw.__class__ = RawSample
        samples.append(raw)
    frame = RawTelemetryTwin(boot, seq, time_ms, tuple(samples), historical, dropped_labels)
    frame.__class__ = RawTelemetry
    return frame


def decode_telemetry_rows(
    payload: bytes, *, limits: Limits = DEFAULT_LIMITS, now_ms: int | None = None
) -> TelemetryRows:
    """decode_telemetry with the samples as plain tuples (same checks, same errors)."""
    return TelemetryRows(*_decode(payload, limits, now_ms))


def _decode(
    payload: bytes, limits: Limits, now_ms: int | None
) -> tuple[int, int, int, tuple[SampleRow, ...], bool, int]:
    obj = unpack_map(payload, limits)
    get = obj.get
    v = get("v")
    boot = get("b")
    seq = get("s")
    time_ms = get("t")
    m = get("m")
    historical = get("h", False)
    if not (
        type(v) is int
        and v == PROTOCOL_VERSION
        and type(boot) is int
        and 0 <= boot <= UINT32_MAX
        and type(seq) is int
        and 0 <= seq <= UINT32_MAX
        and type(time_ms) is int
        and 0 <= time_ms <= INT64_MAX
        and type(m) is tuple
        and (historical is False or historical is True)
    ):
        _bad_header(obj)
    if len(m) > limits.max_samples:
        raise SchemaError("too many samples", f"{len(m)} samples, limit {limits.max_samples}")
    latest = INT64_MAX
    if now_ms is not None:
        latest = min(latest, now_ms + limits.max_future_skew_ms)
    rows, dropped_labels = _samples(m, time_ms, latest, limits)
    return boot, seq, time_ms, rows, historical, dropped_labels


def _bad_header(obj: Fields) -> NoReturn:
    check_version(obj)
    get_uint32(obj, "b", "boot")
    get_uint32(obj, "s", "seq")
    get_time_ms(obj)
    get_bool(obj, "h", "historical", default=False)
    m = required(obj, "m", "samples")
    raise SchemaError("wrong type", f"m (samples) must be an array, got {describe(m)}")


def _samples(
    m: tuple[object, ...], time_ms: int, latest: int, limits: Limits
) -> tuple[tuple[SampleRow, ...], int]:
    """The frame's samples, and how many labels with an empty value were left out."""
    # Errors get the sample's index here, once, instead of a location string built per sample.
    names_ok = _metric_names_ok
    max_name_len = limits.max_name_len
    t_ok = time_ms <= latest  # the timestamp of every sample without dt
    out: list[SampleRow] = []
    append = out.append
    dropped = 0
    try:
        for sample in m:
            if type(sample) is not tuple:
                _bad_sample(sample)
            n = len(sample)
            if n == 2:
                metric, value = sample
                dt = 0
                labels: Labels = ()
                if not t_ok:
                    _bad_timestamp(time_ms, latest, limits)
            else:
                if n == 3:
                    metric, value, dt = sample
                    labels = ()
                elif n == 4:
                    metric, value, dt, raw_labels = sample
                    labels = check_labels(raw_labels, limits, "labels")
                    if len(labels) != len(raw_labels):
                        dropped += len(raw_labels) - len(labels)
                else:
                    _bad_sample(sample)
                if type(dt) is not int:
                    _bad_sample(sample)
                timestamp = time_ms + dt
                if timestamp < 0 or timestamp > latest:
                    _bad_timestamp(timestamp, latest, limits)
            if type(metric) is str:
                if metric not in names_ok or len(metric) > max_name_len:
                    check_metric_name(metric, limits, "metric")
            elif type(metric) is not int or not 0 <= metric <= UINT32_MAX:
                _bad_sample(sample)
            kind = type(value)
            if kind is float:
                if value - value != 0.0:  # only NaN and +-Inf give NaN here
                    _bad_sample(sample)
            elif kind is int:
                value = float(value)
            elif kind is tuple:
                value = _histogram_value(value, limits)
            else:
                _bad_sample(sample)
            append((metric, value, dt, labels))
    except ProtocolError as exc:
        raise type(exc)(exc.reason, f"m[{len(out)}] {exc.detail}") from None
    return tuple(out), dropped


def _bad_sample(sample: object) -> NoReturn:
    """Raise the precise error for a sample the fast path refused."""
    if type(sample) is not tuple or not 2 <= len(sample) <= 4:
        raise SchemaError(
            "bad sample",
            "must be [metric, value], [metric, value, dt_ms] or "
            f"[metric, value, dt_ms, labels], got {describe(sample)}",
        )
    metric, value = sample[0], sample[1]
    if type(metric) is int:
        if not 0 <= metric <= UINT32_MAX:
            raise SchemaError("alias out of range", f"alias = {metric}, allowed 0..{UINT32_MAX}")
    elif type(metric) is not str:
        raise SchemaError(
            "bad metric", f"metric must be an alias (int) or a name, got {describe(metric)}"
        )
    if type(value) is float and not isfinite(value):
        raise SchemaError("non-finite value", f"value = {value}; NaN and Inf are refused")
    if type(value) not in (float, int, tuple):
        raise SchemaError(
            "bad value type",
            f"value = {describe(value)}; an int, a float or a histogram "
            "[count, sum, [bucket counts]] is required",
        )
    if len(sample) > 2 and type(sample[2]) is not int:
        raise SchemaError("wrong type", f"dt_ms must be an int, got {describe(sample[2])}")
    raise SchemaError("bad sample", f"got {describe(sample)}")  # unreachable: callers saw a fault


def _bad_timestamp(timestamp: int, latest: int, limits: Limits) -> NoReturn:
    if timestamp < 0:
        raise TimestampOutOfRange("negative timestamp", f"t + dt_ms = {timestamp}")
    if latest == INT64_MAX:
        raise TimestampOutOfRange(
            "timestamp out of range", f"t + dt_ms = {timestamp} does not fit int64"
        )
    raise TimestampOutOfRange(
        "timestamp in the future",
        f"t + dt_ms = {timestamp} is more than {limits.max_future_skew_ms} ms ahead "
        "of the gateway's clock",
    )


def _histogram_value(raw: tuple[object, ...], limits: Limits) -> HistogramValue:
    if len(raw) != 3:
        raise SchemaError(
            "bad value type",
            f"a histogram value is [count, sum, [bucket counts]], got {describe(raw)}",
        )
    count = _finite(raw[0], "histogram count")
    total = _finite(raw[1], "histogram sum")
    raw_buckets = raw[2]
    if count < 0:
        raise SchemaError("histogram out of range", f"count {count} is negative")
    if type(raw_buckets) is not tuple:
        raise SchemaError(
            "wrong type", f"bucket counts must be an array, got {describe(raw_buckets)}"
        )
    if len(raw_buckets) > limits.max_buckets:
        raise SchemaError(
            "too many buckets", f"{len(raw_buckets)} bucket counts, limit {limits.max_buckets}"
        )
    buckets: list[float] = []
    previous = 0.0
    for raw_bucket in raw_buckets:
        kind = type(raw_bucket)
        if kind is int:
            bucket = float(raw_bucket)
        elif kind is float and raw_bucket - raw_bucket == 0.0:
            bucket = raw_bucket
        else:
            bucket = _finite(raw_bucket, f"bucket count [{len(buckets)}]")
        if bucket < previous or bucket > count:
            raise SchemaError(
                "histogram out of range",
                f"bucket count [{len(buckets)}] = {bucket}: cumulative counts must be "
                f"non-decreasing, from 0 up to count ({count})",
            )
        buckets.append(bucket)
        previous = bucket
    value = HistogramValueTwin(count, total, tuple(buckets))
    value.__class__ = HistogramValue
    return value


def _finite(raw: object, where: str) -> float:
    if type(raw) is not float and type(raw) is not int:
        raise SchemaError("bad value type", f"{where} = {describe(raw)}; a number is required")
    value = float(raw)
    if not isfinite(value):
        raise SchemaError("non-finite value", f"{where} = {value}; NaN and Inf are refused")
    return value
