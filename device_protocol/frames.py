"""Typed frames of protocol v1: plain frozen values, no behaviour beyond lookups.

A telemetry frame is decoded in two steps because aliases can only be resolved against the
birth of the same boot, which the gateway may not have yet:

    decode_telemetry(payload)  -> RawTelemetry   (structure checked, aliases unresolved)
    resolve_telemetry(raw, birth) -> Telemetry   (aliases and birth labels applied)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

PROTOCOL_VERSION = 1

Labels = tuple[tuple[str, str], ...]
"""Label pairs sorted by name, names unique."""


class FrameKind(str, Enum):  # noqa: UP042 - str() must stay as it is for code written against it
    BIRTH = "birth"
    TELEMETRY = "telemetry"
    DEATH = "death"
    CMD = "cmd"


class MetricType(str, Enum):  # noqa: UP042 - str() must stay as it is for code written against it
    GAUGE = "gauge"
    COUNTER = "counter"
    HISTOGRAM = "histogram"


@dataclass(frozen=True, slots=True)
class MetricDef:
    alias: int
    name: str
    type: MetricType
    bounds: tuple[float, ...] = ()  # histogram upper bounds, strictly increasing, no +Inf


# weakref_slot: the codec caches per-birth alias tables keyed weakly on the Birth object.
@dataclass(frozen=True, slots=True, weakref_slot=True)
class Birth:
    boot: int
    time_ms: int
    platform: str
    firmware: str
    labels: Labels
    interval_ms: int
    metrics: tuple[MetricDef, ...]
    # Labels with an empty value the decoder left out (Prometheus reads {a=""} as no label a).
    dropped_labels: int = 0

    def by_alias(self) -> dict[int, MetricDef]:
        return {m.alias: m for m in self.metrics}

    def by_name(self) -> dict[str, MetricDef]:
        return {m.name: m for m in self.metrics}


@dataclass(frozen=True, slots=True)
class HistogramValue:
    count: float
    sum: float
    buckets: tuple[float, ...]  # cumulative counts, one per declared bound (+Inf is `count`)


@dataclass(frozen=True, slots=True)
class RawSample:
    metric: int | str  # alias from the birth, or a metric name
    value: float | HistogramValue
    dt_ms: int
    labels: Labels


@dataclass(frozen=True, slots=True)
class RawTelemetry:
    boot: int
    seq: int
    time_ms: int
    samples: tuple[RawSample, ...]
    historical: bool
    # Sample labels with an empty value the decoder left out (the samples are kept).
    dropped_labels: int = 0


SampleRow = tuple[int | str, "float | HistogramValue", int, Labels]
"""A RawSample as a plain tuple (metric, value, dt_ms, labels): the hot path's form."""


@dataclass(frozen=True, slots=True)
class TelemetryRows:
    """A decoded, validated telemetry frame whose samples are plain tuples (SampleRow).

    Same content and same validation as RawTelemetry; a tuple costs a fifth of a RawSample to
    build, which matters at thousands of frames a second (the gateway's ingest path)."""

    boot: int
    seq: int
    time_ms: int
    rows: tuple[SampleRow, ...]
    historical: bool
    dropped_labels: int = 0  # as in RawTelemetry

    def to_raw(self) -> RawTelemetry:
        return RawTelemetry(self.boot, self.seq, self.time_ms,
                            tuple(RawSample(*row) for row in self.rows), self.historical,
                            self.dropped_labels)

    @classmethod
    def from_raw(cls, raw: RawTelemetry) -> TelemetryRows:
        return cls(raw.boot, raw.seq, raw.time_ms,
                   tuple((s.metric, s.value, s.dt_ms, s.labels) for s in raw.samples),
                   raw.historical, raw.dropped_labels)


@dataclass(frozen=True, slots=True)
class Sample:
    """One resolved sample of a gauge or counter."""

    name: str
    labels: Labels  # the sample's own labels merged over the birth labels
    value: float
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class HistogramSample:
    name: str
    labels: Labels
    count: float
    sum: float
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), +Inf last
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Telemetry:
    boot: int
    seq: int
    time_ms: int
    samples: tuple[Sample | HistogramSample, ...]
    historical: bool


@dataclass(frozen=True, slots=True)
class Death:
    boot: int


@dataclass(frozen=True, slots=True)
class GatewayState:
    online: bool
    time_ms: int


@dataclass(frozen=True, slots=True)
class Command:
    rebirth: bool = False
