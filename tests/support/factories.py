"""Deterministic protocol frames for tests: births and telemetry with known contents."""

from __future__ import annotations

import time
from collections.abc import Sequence

from device_protocol import (
    Birth,
    Labels,
    MetricDef,
    MetricType,
    RawSample,
    RawTelemetry,
    TelemetryRows,
    decode_telemetry_rows,
    encode_birth,
    encode_telemetry,
)

METRICS = (
    MetricDef(0, "device_temperature_celsius", MetricType.GAUGE),
    MetricDef(1, "inference_total", MetricType.COUNTER),
    MetricDef(2, "inference_seconds", MetricType.HISTOGRAM, (0.01, 0.1, 1.0)),
)


def now_ms() -> int:
    return int(time.time() * 1000)


def boot_id(device_index: int, reboot: int = 0) -> int:
    return (device_index * 7919 + reboot * 104729 + 1) % 2**32


# A minute: tests that burst frames and then wait must not see their devices time out (late,
# offline, stale markers); lifecycle tests pass a short interval or short thresholds.
def birth(device_index: int, *, reboot: int = 0, time_ms: int | None = None,
          interval_ms: int = 60_000) -> Birth:
    return Birth(boot=boot_id(device_index, reboot), time_ms=time_ms or now_ms(),
                 platform="esp32-s3", firmware="2.1.0", labels=(("site", "lab"),),
                 interval_ms=interval_ms, metrics=METRICS)


def fixed_birth(boot: int, time_ms: int, metrics: tuple[MetricDef, ...], *,
                interval_ms: int = 1_000, platform: str = "esp32-s3", firmware: str = "1.0.0",
                labels: Labels = (("site", "lab"),)) -> Birth:
    """A birth at a time the test chose, for tests that compile frames or drive FleetState
    themselves with explicit times."""
    return Birth(boot, time_ms, platform, firmware, labels, interval_ms, metrics)


def birth_payload(device_index: int, **kwargs: object) -> bytes:
    return encode_birth(birth(device_index, **kwargs))  # type: ignore[arg-type]


def sample_value(device_index: int, seq: int) -> float:
    """A value that identifies (device, seq), so a receiver's contents can be checked exactly."""
    return float(device_index * 100_000 + seq)


def telemetry(device_index: int, seq: int, *, base_ms: int, reboot: int = 0,
              historical: bool = False, step_ms: int = 1000,
              with_histogram: bool = False) -> RawTelemetry:
    samples = [RawSample(0, sample_value(device_index, seq), 0, ()),
               RawSample(1, float(seq), 0, ())]
    if with_histogram:
        from device_protocol import HistogramValue

        samples.append(RawSample(2, HistogramValue(float(seq + 3), 0.5, (1.0, 2.0, 3.0)), 0, ()))
    return RawTelemetry(boot=boot_id(device_index, reboot), seq=seq,
                        time_ms=base_ms + seq * step_ms, samples=tuple(samples),
                        historical=historical)


def decoded_frame(boot: int, seq: int, time_ms: int, samples: Sequence[RawSample],
                  historical: bool = False) -> TelemetryRows:
    """A telemetry frame through the wire codec, as the pipeline decodes it before compiling its
    entries and handing it to the fleet."""
    raw = RawTelemetry(boot, seq, time_ms, tuple(samples), historical)
    return decode_telemetry_rows(encode_telemetry(raw))


def telemetry_payload(device_index: int, seq: int, **kwargs: object) -> bytes:
    return encode_telemetry(telemetry(device_index, seq, **kwargs))  # type: ignore[arg-type]


def device_id(device_index: int) -> str:
    return f"dev-{device_index:04d}"
