"""Device profiles: which metrics a simulated device declares and how their values move.

Pure: every value comes from the `random.Random` handed to the model, so a seed reproduces a
fleet exactly. The dynamics are deliberately simple but shaped like the real thing, so that the
gateway and the dashboards see plausible series: latency rises with load, temperature lags
behind load, counters only grow within a boot, batteries drain and get swapped.

Each profile sends a mix of aliased metrics (declared in the birth, sent by alias; counters and
histograms must be declared so the gateway knows their type and bounds) and named metrics
(undeclared gauges sent by name, as firmware does for ad-hoc diagnostics).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from device_protocol.frames import HistogramValue, Labels, MetricDef, MetricType


@dataclass(frozen=True, slots=True)
class Reading:
    """One value as the firmware reports it, before it is placed in a frame."""

    metric: int | str  # alias declared in the birth, or an undeclared metric name
    labels: Labels
    value: float | HistogramValue


class DeviceModel(Protocol):
    def read(self, elapsed_ms: int) -> list[Reading]:
        """Advance the device by `elapsed_ms` and read every metric once, in a fixed order."""
        ...


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str
    platforms: tuple[str, ...]  # one is picked per device
    firmware: str
    model_name: str  # the ML model the device runs; a birth label
    metrics: tuple[MetricDef, ...]  # declared in the birth
    new_model: Callable[[random.Random], DeviceModel]

    def birth_labels(self) -> Labels:
        return (("model", self.model_name), ("profile", self.name))

    def natural_samples(self) -> int:
        """Samples in one reading of every metric (asked of a throwaway model)."""
        return len(self.new_model(random.Random(0)).read(1))


class UnknownProfileError(ValueError):
    """A profile name that is not in `PROFILES`."""


def _labels(**pairs: str) -> Labels:
    return tuple(sorted(pairs.items()))


def _clamp(value: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, value))


def _revert(rng: random.Random, value: float, mean: float, pull: float, noise: float) -> float:
    """One step of a mean-reverting random walk (discrete Ornstein-Uhlenbeck)."""
    return value + pull * (mean - value) + rng.gauss(0.0, noise)


def _lag(value: float, target: float, elapsed_ms: int, tau_s: float) -> float:
    """First-order lag: how a temperature follows its heat source."""
    return target + (value - target) * math.exp(-elapsed_ms / 1000.0 / tau_s)


def _events(rng: random.Random, rate_per_s: float, elapsed_ms: int) -> int:
    """Whole events in the interval; stochastic rounding keeps the long-run rate exact."""
    expected = rate_per_s * elapsed_ms / 1000.0
    return int(expected + rng.random())


class _Histogram:
    """Cumulative histogram fed with lognormal latencies.

    Observations are spread over the buckets by the lognormal CDF instead of being drawn one by
    one: the counts stay whole and cumulative, and the cost does not grow with the event rate.
    """

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self._cumulative = [0] * len(bounds)
        self._count = 0
        self._sum = 0.0

    def observe(self, n: int, median_s: float, sigma: float) -> None:
        if n <= 0:
            return
        mu = math.log(median_s)
        for i, bound in enumerate(self.bounds):
            cdf = 0.5 * (1.0 + math.erf((math.log(bound) - mu) / (sigma * math.sqrt(2.0))))
            self._cumulative[i] += round(n * cdf)
        self._count += n
        self._sum += n * math.exp(mu + sigma * sigma / 2.0)

    def value(self) -> HistogramValue:
        return HistogramValue(
            count=float(self._count),
            sum=round(self._sum, 6),
            buckets=tuple(float(c) for c in self._cumulative),
        )


# --- liquid-edge: liquid neural networks on ESP32 / STM32 -----------------------------------

LIQUID_DURATION_BOUNDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

_LIQUID_METRICS = (
    MetricDef(0, "liquid_inference_total", MetricType.COUNTER),
    MetricDef(1, "liquid_inference_duration_seconds", MetricType.HISTOGRAM, LIQUID_DURATION_BOUNDS),
    MetricDef(2, "device_temperature_celsius", MetricType.GAUGE),
    MetricDef(3, "liquid_memory_usage_bytes", MetricType.GAUGE),
    MetricDef(4, "liquid_energy_consumption_milliwatts", MetricType.GAUGE),
)


class _LiquidEdgeModel:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._load = rng.uniform(0.2, 0.6)
        self._ambient = rng.uniform(20.0, 28.0)
        self._temp = self._ambient + 5.0
        self._total = 0
        self._hist = _Histogram(LIQUID_DURATION_BOUNDS)
        self._base_latency_s = rng.uniform(0.006, 0.02)
        self._model_bytes = float(rng.choice((96, 128, 192, 256)) * 1024)
        self._sram_base = rng.uniform(120.0, 200.0) * 1024
        self._top1 = rng.uniform(0.88, 0.95)
        self._f1 = self._top1 - rng.uniform(0.01, 0.04)
        self._radio_mw = 40.0

    def read(self, elapsed_ms: int) -> list[Reading]:
        rng = self._rng
        self._load = _clamp(_revert(rng, self._load, 0.45, 0.1, 0.05), 0.05, 0.95)
        n = _events(rng, 5.0 + 45.0 * self._load, elapsed_ms)
        self._total += n
        self._hist.observe(n, self._base_latency_s * (1.0 + 1.5 * self._load), 0.35)
        self._temp = _lag(self._temp, self._ambient + 30.0 * self._load, elapsed_ms, 60.0)
        self._top1 = _clamp(_revert(rng, self._top1, 0.92, 0.02, 0.002), 0.5, 0.999)
        self._f1 = _clamp(_revert(rng, self._f1, 0.89, 0.02, 0.002), 0.5, 0.999)
        # The radio wakes in bursts to sync; most intervals it idles.
        self._radio_mw = 120.0 if rng.random() < 0.15 else 8.0 + rng.uniform(0.0, 4.0)
        arena = 64 * 1024 * (0.5 + self._load)
        core0 = _clamp(100.0 * self._load + rng.gauss(0.0, 3.0), 0.0, 100.0)
        core1 = _clamp(60.0 * self._load + rng.gauss(0.0, 3.0), 0.0, 100.0)
        return [
            Reading(0, (), float(self._total)),
            Reading(1, (), self._hist.value()),
            Reading(2, (), round(self._temp + rng.gauss(0.0, 0.1), 2)),
            Reading(3, _labels(memory_type="flash"), self._model_bytes),
            Reading(3, _labels(memory_type="psram"), float(round(2.0 * arena))),
            Reading(3, _labels(memory_type="sram"), float(round(self._sram_base + arena))),
            Reading(4, _labels(component="cpu"), round(80.0 + 220.0 * self._load, 2)),
            Reading(4, _labels(component="radio"), round(self._radio_mw, 2)),
            Reading(4, _labels(component="sensor"), round(rng.gauss(5.0, 0.3), 2)),
            Reading("liquid_cpu_usage_percent", _labels(core="0"), round(core0, 2)),
            Reading("liquid_cpu_usage_percent", _labels(core="1"), round(core1, 2)),
            Reading("liquid_model_accuracy", _labels(metric_type="f1"), round(self._f1, 4)),
            Reading("liquid_model_accuracy", _labels(metric_type="top1"), round(self._top1, 4)),
        ]


# --- audio-nets: keyword spotting on nRF52840 / STM32F4 -------------------------------------

_AUDIO_METRICS = (
    MetricDef(0, "kws_inference_total", MetricType.COUNTER),
    MetricDef(1, "kws_keywords_detected_total", MetricType.COUNTER),
    MetricDef(2, "kws_inference_latency_ms", MetricType.GAUGE),
    MetricDef(3, "device_power_milliwatts", MetricType.GAUGE),
    MetricDef(4, "device_temperature_celsius", MetricType.GAUGE),
)

# A 150 mAh LiPo at 3.7 V, in milliwatt-seconds; small so that the drain shows within hours.
_BATTERY_MWS = 150.0 * 3.7 * 3600.0


class _AudioNetsModel:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._activity = rng.uniform(0.1, 0.5)  # how much speech the microphone hears
        self._base_latency_ms = rng.uniform(25.0, 50.0)
        self._inferences = 0
        self._detections = 0
        self._battery_mws = _BATTERY_MWS * rng.uniform(0.3, 1.0)
        self._ambient = rng.uniform(18.0, 26.0)
        self._temp = self._ambient
        self._accuracy = rng.uniform(0.9, 0.96)

    def read(self, elapsed_ms: int) -> list[Reading]:
        rng = self._rng
        self._activity = _clamp(_revert(rng, self._activity, 0.3, 0.1, 0.06), 0.0, 1.0)
        # One inference per 250 ms audio window, always; detections follow speech activity.
        self._inferences += _events(rng, 4.0, elapsed_ms)
        self._detections += _events(rng, 0.2 * self._activity, elapsed_ms)
        latency = self._base_latency_ms * (1.0 + 0.4 * self._activity) + rng.gauss(0.0, 1.0)
        power = 3.0 + 12.0 * self._activity + (25.0 if rng.random() < 0.05 else 0.0)
        self._battery_mws -= power * elapsed_ms / 1000.0
        if self._battery_mws < 0.05 * _BATTERY_MWS:
            self._battery_mws = _BATTERY_MWS  # swapped by a technician
        self._temp = _lag(self._temp, self._ambient + 0.3 * power, elapsed_ms, 120.0)
        self._accuracy = _clamp(_revert(rng, self._accuracy, 0.93, 0.02, 0.003), 0.5, 0.999)
        battery = 100.0 * self._battery_mws / _BATTERY_MWS
        return [
            Reading(0, (), float(self._inferences)),
            Reading(1, (), float(self._detections)),
            Reading(2, (), round(max(1.0, latency), 2)),
            Reading(3, (), round(power, 2)),
            Reading(4, (), round(self._temp + rng.gauss(0.0, 0.05), 2)),
            Reading("device_battery_percent", (), round(battery, 2)),
            Reading("kws_model_accuracy", (), round(self._accuracy, 4)),
        ]


# --- tiny-llm: small language models on single-board computers ------------------------------

TTFT_BOUNDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

_TINY_LLM_METRICS = (
    MetricDef(0, "model_tokens_generated_total", MetricType.COUNTER),
    MetricDef(1, "model_time_to_first_token_seconds", MetricType.HISTOGRAM, TTFT_BOUNDS),
    MetricDef(2, "device_temperature_celsius", MetricType.GAUGE),
    MetricDef(3, "device_memory_usage_bytes", MetricType.GAUGE),
)


class _TinyLlmModel:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._demand = rng.uniform(0.2, 0.7)  # share of time spent generating
        self._peak_tps = rng.uniform(8.0, 30.0)
        self._ambient = rng.uniform(22.0, 30.0)
        self._cpu_temp = self._ambient + 15.0
        self._tokens = 0
        self._ttft = _Histogram(TTFT_BOUNDS)
        self._weights_bytes = float(rng.choice((350, 700, 1100)) * 1024 * 1024)

    def read(self, elapsed_ms: int) -> list[Reading]:
        rng = self._rng
        self._demand = _clamp(_revert(rng, self._demand, 0.5, 0.1, 0.08), 0.0, 1.0)
        # Above 80 C the SoC throttles: throughput falls while the heat persists.
        throttle = 1.0 if self._cpu_temp < 80.0 else 0.6
        tps = self._peak_tps * throttle * (0.9 + 0.1 * rng.random()) if self._demand > 0.05 else 0.0
        self._tokens += _events(rng, tps * self._demand, elapsed_ms)
        self._ttft.observe(_events(rng, 0.5 * self._demand, elapsed_ms), 0.3 / throttle, 0.5)
        target = self._ambient + 60.0 * self._demand
        self._cpu_temp = _lag(self._cpu_temp, target, elapsed_ms, 45.0)
        kv_cache = 64 * 1024 * 1024 * self._demand
        cpu = self._cpu_temp + rng.gauss(0.0, 0.2)
        gpu = self._cpu_temp - 4.0 + rng.gauss(0.0, 0.2)
        board = self._ambient + 0.3 * (self._cpu_temp - self._ambient)
        return [
            Reading(0, (), float(self._tokens)),
            Reading(1, (), self._ttft.value()),
            Reading(2, _labels(sensor_location="board"), round(board, 2)),
            Reading(2, _labels(sensor_location="cpu"), round(cpu, 2)),
            Reading(2, _labels(sensor_location="gpu"), round(gpu, 2)),
            Reading(3, (), float(round(self._weights_bytes + kv_cache))),
            Reading("model_tokens_per_second", (), round(tps * self._demand, 2)),
            Reading("model_requests_active", (), float(round(3 * self._demand))),
        ]


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="liquid-edge",
            description="liquid neural network inference on microcontrollers",
            platforms=("esp32-s3", "stm32h7"),
            firmware="2.1.0",
            model_name="lnn-anomaly-v3",
            metrics=_LIQUID_METRICS,
            new_model=_LiquidEdgeModel,
        ),
        Profile(
            name="audio-nets",
            description="always-on keyword spotting on battery-powered boards",
            platforms=("nrf52840", "stm32f4"),
            firmware="1.4.2",
            model_name="kws-ds-cnn-s",
            metrics=_AUDIO_METRICS,
            new_model=_AudioNetsModel,
        ),
        Profile(
            name="tiny-llm",
            description="small language model serving on single-board computers",
            platforms=("rpi5", "jetson-orin-nano", "rk3588"),
            firmware="0.9.1",
            model_name="tinyllama-1.1b-q4",
            metrics=_TINY_LLM_METRICS,
            new_model=_TinyLlmModel,
        ),
    )
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise UnknownProfileError(f"unknown profile {name!r}; known profiles: {known}") from None


def parse_profiles(spec: str | None) -> tuple[Profile, ...]:
    """`"liquid-edge,tiny-llm"` -> profiles; None or empty -> every known profile."""
    if not spec:
        return tuple(PROFILES.values())
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        return tuple(PROFILES.values())
    return tuple(get_profile(name) for name in names)
