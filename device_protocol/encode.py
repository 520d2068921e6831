"""Encoders of protocol v1: frames -> the shortest msgpack the decoders accept.

Encoders trust their input (frames built by our own code); the decoders are the validators.
Floats go out as float64: float32 would turn a counter past 2**24 into a lie.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .frames import (
    PROTOCOL_VERSION,
    Birth,
    Command,
    Death,
    GatewayState,
    HistogramValue,
    MetricType,
    RawTelemetry,
)


def _pack(obj: dict[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, use_single_float=False)


def _count(value: float) -> float | int:
    # Histogram counts are whole numbers in practice: a 1-byte int beats a 9-byte float64.
    if value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


def encode_birth(birth: Birth) -> bytes:
    metrics: list[list[Any]] = []
    for m in birth.metrics:
        if m.type == MetricType.HISTOGRAM:
            metrics.append([m.alias, m.name, MetricType(m.type).value, list(m.bounds)])
        else:
            metrics.append([m.alias, m.name, MetricType(m.type).value])
    obj: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "b": birth.boot,
        "t": birth.time_ms,
        "hw": birth.platform,
        "fw": birth.firmware,
        "interval": birth.interval_ms,
        "metrics": metrics,
    }
    if birth.labels:
        obj["labels"] = dict(birth.labels)
    return _pack(obj)


def encode_telemetry(raw: RawTelemetry) -> bytes:
    samples: list[list[Any]] = []
    append = samples.append
    for s in raw.samples:
        value: Any = s.value
        if type(value) is HistogramValue:
            value = [_count(value.count), value.sum, [_count(b) for b in value.buckets]]
        if s.labels:
            append([s.metric, value, s.dt_ms, dict(s.labels)])
        elif s.dt_ms:
            append([s.metric, value, s.dt_ms])
        else:
            append([s.metric, value])
    obj: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "b": raw.boot,
        "s": raw.seq,
        "t": raw.time_ms,
        "m": samples,
    }
    if raw.historical:
        obj["h"] = True
    return _pack(obj)


def encode_death(death: Death) -> bytes:
    return _pack({"v": PROTOCOL_VERSION, "b": death.boot})


def encode_command(cmd: Command) -> bytes:
    return _pack({"rebirth": True} if cmd.rebirth else {})


def encode_gateway_state(state: GatewayState) -> bytes:
    return _pack({"online": state.online, "t": state.time_ms})
