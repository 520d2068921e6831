"""Device profiles: the five seed fleets of docs/seeds.md, what they declare and how values move.

docs/seeds.md is the contract (metric names, labels, types, normal ranges, faults); the alert
rules and dashboards are written against it, and tests/sim/test_profiles.py checks this module
against its tables.

Pure: every value comes from the `random.Random` handed to the model, so a seed reproduces a
fleet exactly. The dynamics are simple but shaped like the real thing: load is a mean-reverting
walk that moves the inference rate, CPU use and power; temperatures follow their heat source with
a first-order lag; counters only grow within a boot; batteries drain and get swapped. Every walk
is stepped with its exact solution for the elapsed time, so a device read every second and one
read every five seconds move the same way in simulated time.

The latency of one inference is set by the compute (model and clock), not by the load: a healthy
device runs at its platform's baseline (`LATENCY_BASELINES`) times a unit-to-unit factor within
+-3 %, at most ~2 % more or less with load (cache and bus contention) and +-1 % jitter. The
alert rules' baseline recording rules carry the same numbers, so "10 % over the baseline"
(PerformanceRegression) is a fault, never a healthy device: throttling (overheat, where the
platform throttles) and allocator pressure (memory-leak past 80 % used) make it.

Noise is triangular (the sum of two uniforms) rather than Gaussian: a third of the cost of
`gauss()`, and bounded, so a healthy device never throws the six-sigma outlier that would fire
an alert. `read()` is on the simulator's hot path (10,000 devices in one process), hence the
per-interval constants cached in `_retime` and the readings of constants built once.

Each profile sends a mix of aliased metrics (declared in the birth and sent by alias; counters
and histograms must be declared so the gateway knows their type and bounds) and named metrics
(undeclared gauges sent by name, as firmware does for ad-hoc diagnostics).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, Protocol

from device_protocol.frames import HistogramValue, Labels, MetricDef, MetricType


class Reading(NamedTuple):
    """One value as the firmware reports it, before it is placed in a frame.

    A NamedTuple rather than a dataclass: built ~15 times per read, and it costs half."""

    metric: int | str  # alias declared in the birth, or an undeclared metric name
    labels: Labels
    value: float | HistogramValue


class Baseline(NamedTuple):
    """A healthy device's nominal performance on one platform, for one model: what the
    PerformanceRegression and LowThroughput alerts compare a device with. The recording rules in
    deploy/prometheus/rules/ and the "Baselines" tables of docs/seeds.md carry the same numbers
    (tests/sim/test_profiles.py holds the three together)."""

    latency_s: float  # the latency statistic the seed reports; see LATENCY_BASELINES
    throughput: float = 0.0  # per second where an alert compares it (tokens, frames); else 0


# profile -> platform -> model (the `model` label of its series) -> Baseline. Which latency:
#   liquid-edge  mean duration of one inference (the histogram's _sum / _count)
#   audio-nets   audio_inference_latency_ms (one 250 ms window), here in seconds
#   tiny-llm     model_latency_p95_ms (per-token p95), here in seconds; throughput: tokens/s
#                while generating (the per-token p95 is 1.32 x the mean of 1 / throughput)
#   edge-tpu     tpu_latency_p99_ms per network, here in seconds; throughput: fps
#   photon       photon_inference_latency_seconds
LATENCY_BASELINES: dict[str, dict[str, dict[str, Baseline]]] = {
    "liquid-edge": {
        "esp32-s3": {"lnn-anomaly-v3": Baseline(0.018)},
        "stm32h7": {"lnn-anomaly-v3": Baseline(0.011)},
        "rpi-cm4": {"lnn-anomaly-v3": Baseline(0.006)},
    },
    "audio-nets": {
        "stm32f4": {"kws-lnn-12": Baseline(0.0105)},
        "nrf52840": {"kws-lnn-12": Baseline(0.0085)},
    },
    "tiny-llm": {
        "esp32-s3": {"stories-260k-q8": Baseline(0.12, 11.0)},
        "stm32h7": {"stories-260k-q8": Baseline(0.08, 16.5)},
        "riscv-k230": {"stories-260k-q8": Baseline(0.04, 33.0)},
    },
    "edge-tpu": {
        "edgetpu-v5-devboard": {"mobilenet_v3": Baseline(0.0016, 892.0),
                                "yolov8n": Baseline(0.0075, 187.0)},
    },
    "photon": {
        "photon-lt1": {"resnet18-photonic": Baseline(0.0001)},
    },
}


class ModelFault(StrEnum):
    OVERHEAT = "overheat"
    MEMORY_LEAK = "memory-leak"
    ACCURACY_COLLAPSE = "accuracy-collapse"
    FLASH_FILL = "flash-fill"


class DeviceModel(Protocol):
    def read(self, elapsed_ms: int) -> list[Reading]:
        """Advance the device by `elapsed_ms` and read every metric once, in a fixed order."""
        ...

    def inject(self, fault: ModelFault) -> None:
        """Start a fault (idempotent); its effect develops through the dynamics."""
        ...

    @property
    def faults(self) -> frozenset[ModelFault]:
        """The faults active now."""
        ...


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str
    platforms: tuple[str, ...]  # one is picked per device
    firmware: str
    model_name: str  # the ML model the device runs; a birth label
    metrics: tuple[MetricDef, ...]  # declared in the birth
    new_model: Callable[[random.Random, str], DeviceModel]  # (rng, platform)
    model_faults: frozenset[ModelFault]  # the faults `inject` accepts

    def birth_labels(self, platform: str) -> Labels:
        _check_platform(self.name, self.platforms, platform)
        return (("model", self.model_name), ("platform", platform), ("profile", self.name))

    def natural_samples(self) -> int:
        """Samples in one reading of every metric (asked of a throwaway model)."""
        return len(self.new_model(random.Random(0), self.platforms[0]).read(1))


class UnknownProfileError(ValueError):
    """A profile name that is not in `PROFILES`."""


def _check_platform(profile: str, platforms: Collection[str], platform: str) -> None:
    if platform not in platforms:
        raise ValueError(f"profile {profile!r} has no platform {platform!r}; "
                         f"known: {', '.join(platforms)}")


# --- dynamics helpers ----------------------------------------------------------------------

_SQRT6 = math.sqrt(6.0)  # (r() + r() - 1) has variance 1/6


def _labels(**pairs: str) -> Labels:
    return tuple(sorted(pairs.items()))


def _clamp(value: float, lo: float, hi: float) -> float:
    return lo if value < lo else hi if value > hi else value


def _ou(seconds: float, tau_s: float, sd: float) -> tuple[float, float]:
    """(keep, kick) of an exact Ornstein-Uhlenbeck step of `seconds`: stationary spread `sd`
    whatever the step, so the reading interval does not change the dynamics."""
    keep = math.exp(-seconds / tau_s)
    return keep, sd * math.sqrt(1.0 - keep * keep) * _SQRT6


def _revert(r: Callable[[], float], value: float, mean: float, keep: float, kick: float) -> float:
    """One step of a mean-reverting random walk; (keep, kick) from `_ou`."""
    return mean + (value - mean) * keep + (r() + r() - 1.0) * kick


def _lag(value: float, target: float, keep: float) -> float:
    """First-order lag (how a temperature follows its heat source); keep = exp(-dt / tau)."""
    return target + (value - target) * keep


def _events(r: Callable[[], float], rate_per_s: float, seconds: float) -> int:
    """Whole events in the interval; stochastic rounding keeps the long-run rate exact."""
    return int(rate_per_s * seconds + r())


class _Histogram:
    """Cumulative histogram fed with lognormal latencies.

    Observations are spread over the buckets by the lognormal CDF instead of being drawn one by
    one: the counts stay whole and cumulative, and the cost does not grow with the event rate.
    """

    def __init__(self, bounds: tuple[float, ...], sigma: float) -> None:
        self.bounds = bounds
        self._log_bounds = tuple(math.log(b) for b in bounds)
        self._scale = 1.0 / (sigma * math.sqrt(2.0))
        self.mean_factor = math.exp(sigma * sigma / 2.0)  # lognormal mean / median
        self._cumulative = [0.0] * len(bounds)
        self._count = 0.0
        self._sum = 0.0

    def observe(self, n: int, median_s: float) -> None:
        if n <= 0:
            return
        mu = math.log(median_s)
        scale = self._scale
        erf = math.erf
        cumulative = self._cumulative
        for i, log_bound in enumerate(self._log_bounds):
            # round(n * cdf) is monotone in the bound, so each increment is cumulative too.
            cumulative[i] += round(n * 0.5 * (1.0 + erf((log_bound - mu) * scale)))
        self._count += n
        self._sum += n * median_s * self.mean_factor

    def value(self) -> HistogramValue:
        return HistogramValue(self._count, round(self._sum, 6), tuple(self._cumulative))


# --- what the five models share ------------------------------------------------------------

_LOAD_TAU_S = 300.0  # load wanders over minutes
_LOAD_SD = 0.15
_TEMP_NOISE = 0.3  # reported temperatures: sensor noise within +-0.3 C
_HOT_TAU_S = 15.0  # cooling failed: from 30 C to over 85 C in under a minute
_COLLAPSE_TAU_S = 60.0  # accuracy collapse: below 0.8 within a minute, settled in ~5
_LEAK_PER_S = 0.01 / 60.0  # memory leak: 1 % of capacity a minute
_FLASH_FILL_PER_S = 6.0 / 60.0  # flash fill: 6 points a minute, 40 -> 98 % in under 10 min
# How long one inference takes, relative to the platform's baseline (see the module docstring).
_UNIT_SPREAD = 0.03  # unit to unit: crystal tolerance, flash wait states, silicon
_LOAD_SLOWDOWN = 0.04  # full load against none: cache and bus contention, interrupts
_JITTER = 0.01  # reading to reading, bounded
# Allocator pressure: past 80 % used, fragmentation and compaction (or paging, on a host) cost
# time, up to +30 % from 95 % on: a leak shows as a regression before allocations fail.
_PRESSURE_FROM, _PRESSURE_FULL, _PRESSURE_COST = 0.8, 0.95, 0.3
_THROTTLE_C = 80.0  # where a platform throttles: the clock drops above this...
_THROTTLE = 0.6  # ...and so does throughput, by 40 % (an inference takes 1 / 0.6 = 1.67 x)


class _Model:
    """Faults, the load walk and the per-interval constants, shared by the five models."""

    profile = ""
    supported: frozenset[ModelFault] = frozenset()
    _load_lo, _load_hi = 0.05, 0.95
    _typical_load = 0.45  # the middle of the fleet's load means: a baseline device runs at it

    def __init__(self, rng: random.Random) -> None:
        self._r = rng.random
        self._faults: set[ModelFault] = set()
        self._overheat = self._leaking = self._collapsed = self._filling = False
        self._dt_ms = -1
        self._s = 0.0
        self._load_mean = rng.uniform(0.3, 0.6)
        self._load = _clamp(self._load_mean + rng.uniform(-0.15, 0.15), self._load_lo,
                            self._load_hi)
        # Fault parameters are drawn now, so that injecting does not shift the random stream.
        self._hot = rng.uniform(91.5, 95.0)  # where the temperature heads when cooling fails
        self._leaked = 0.0  # share of memory capacity lost to a leak
        self._collapse_to = rng.uniform(0.58, 0.66)
        self._unit = rng.uniform(1.0 - _UNIT_SPREAD, 1.0 + _UNIT_SPREAD)

    @property
    def faults(self) -> frozenset[ModelFault]:
        return frozenset(self._faults)

    def inject(self, fault: ModelFault) -> None:
        fault = ModelFault(fault)
        if fault not in self.supported:
            known = ", ".join(sorted(self.supported))
            raise ValueError(f"profile {self.profile!r} does not support fault {fault.value!r}"
                             f" (supported: {known})")
        self._faults.add(fault)
        self._overheat = ModelFault.OVERHEAT in self._faults
        self._leaking = ModelFault.MEMORY_LEAK in self._faults
        self._collapsed = ModelFault.ACCURACY_COLLAPSE in self._faults
        self._filling = ModelFault.FLASH_FILL in self._faults

    def _retime(self, elapsed_ms: int) -> None:
        """Constants that depend only on the interval; recomputed when it changes."""
        self._dt_ms = elapsed_ms
        s = self._s = max(0, elapsed_ms) / 1000.0
        self._k_load, self._n_load = _ou(s, _LOAD_TAU_S, _LOAD_SD)
        self._k_hot = math.exp(-s / _HOT_TAU_S)
        self._k_collapse = math.exp(-s / _COLLAPSE_TAU_S)
        self._d_leak = _LEAK_PER_S * s

    def _step(self, elapsed_ms: int) -> float:
        """Advance the common state; returns the new load (within _load_lo.._load_hi)."""
        if elapsed_ms != self._dt_ms:
            self._retime(elapsed_ms)
        load = _revert(self._r, self._load, self._load_mean, self._k_load, self._n_load)
        self._load = load = _clamp(load, self._load_lo, self._load_hi)
        if self._leaking and self._leaked < 1.0:
            self._leaked += self._d_leak
        return load

    def _used(self, share: float) -> float:
        """A used-memory share with the leak on top, capped at 99 % (the allocator's reserve)."""
        share += self._leaked
        return 0.99 if share > 0.99 else share

    def _heat(self, temp: float, target: float, keep: float, hot_extra: float = 0.0) -> float:
        """Temperature after one step: towards `target`, or towards ~95 C when cooling failed."""
        if self._overheat:
            return self._hot + hot_extra + (temp - self._hot - hot_extra) * self._k_hot
        return target + (temp - target) * keep

    def _slowdown(self, load: float, used: float, throttled: bool = False) -> float:
        """How long one inference takes now against the platform's baseline (1.0 = baseline),
        jitter included. `used`: the share of the memory its allocator works in."""
        r = self._r
        factor = self._unit * (1.0 + _LOAD_SLOWDOWN * (load - self._typical_load)) \
            * (1.0 + (r() + r() - 1.0) * _JITTER)
        if used > _PRESSURE_FROM:
            factor *= 1.0 + _PRESSURE_COST * min(
                1.0, (used - _PRESSURE_FROM) / (_PRESSURE_FULL - _PRESSURE_FROM))
        return factor / _THROTTLE if throttled else factor

    def _noisy(self, value: float, amplitude: float) -> float:
        """`value` give or take `amplitude` (triangular: most of it near `value`)."""
        r = self._r
        return value + (r() + r() - 1.0) * amplitude


_ALL_FAULTS = frozenset(ModelFault)
_COMMON_FAULTS = frozenset({ModelFault.OVERHEAT, ModelFault.MEMORY_LEAK,
                            ModelFault.ACCURACY_COLLAPSE})


# --- 1. liquid-edge: liquid neural networks for robotics -----------------------------------

LIQUID_DURATION_BOUNDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

_LIQUID_METRICS = (
    MetricDef(0, "liquid_inference_total", MetricType.COUNTER),
    MetricDef(1, "liquid_inference_duration_seconds", MetricType.HISTOGRAM, LIQUID_DURATION_BOUNDS),
    MetricDef(2, "liquid_memory_usage_bytes", MetricType.GAUGE),
    MetricDef(3, "liquid_memory_capacity_bytes", MetricType.GAUGE),
    MetricDef(4, "device_temperature_celsius", MetricType.GAUGE),
)


@dataclass(frozen=True, slots=True)
class _LiquidPlatform:
    sram: int  # capacities in bytes (on the CM4 the kit reports its LPDDR4 as "sram")
    psram: int
    flash: int
    cpu_mw: float  # CPU power at no load
    cpu_load_mw: float  # added at full load
    heat: float  # degrees above the usual at the same load (enclosure, heat sink)


_KIB, _MIB, _GIB = 1024, 1024 * 1024, 1024 * 1024 * 1024

_LIQUID_PLATFORMS = {
    "esp32-s3": _LiquidPlatform(512 * _KIB, 8 * _MIB, 16 * _MIB, 80.0, 200.0, 0.0),
    "stm32h7": _LiquidPlatform(1 * _MIB, 8 * _MIB, 2 * _MIB, 90.0, 190.0, 0.0),
    "rpi-cm4": _LiquidPlatform(2 * _GIB, 512 * _MIB, 32 * _GIB, 100.0, 180.0, 3.0),
}
# Inference durations are nearly fixed by the compute: a narrow lognormal around the median.
_LIQUID_SIGMA = 0.08

_FLASH = _labels(memory_type="flash")
_PSRAM = _labels(memory_type="psram")
_SRAM = _labels(memory_type="sram")
_LIQUID_CPU, _LIQUID_MW = "liquid_cpu_usage_percent", "liquid_energy_consumption_milliwatts"
_CORE0, _CORE1 = _labels(core="0"), _labels(core="1")
_F1, _TOP1 = _labels(metric_type="f1"), _labels(metric_type="top1")
_CPU, _RADIO = _labels(component="cpu"), _labels(component="radio")
_SENSOR = _labels(component="sensor")


class _LiquidEdgeModel(_Model):
    profile = "liquid-edge"
    supported = _ALL_FAULTS  # flash-fill: the flash partition fills with logs

    def __init__(self, rng: random.Random, platform: str) -> None:
        _check_platform(self.profile, _LIQUID_PLATFORMS, platform)
        super().__init__(rng)
        p = self._p = _LIQUID_PLATFORMS[platform]
        (baseline,) = LATENCY_BASELINES[self.profile][platform].values()
        self._ambient = rng.uniform(23.5, 28.0)
        self._temp = self._target_temp(self._load)
        self._total = 0.0
        self._hist = _Histogram(LIQUID_DURATION_BOUNDS, _LIQUID_SIGMA)
        # The baseline is the mean duration (what _sum / _count gives), the histogram's median
        # a little under it.
        self._median_s = baseline.latency_s / self._hist.mean_factor
        self._sram_share = rng.uniform(0.45, 0.55)
        self._flash_share = rng.uniform(0.3, 0.5)  # firmware + model; moves only when filling
        self._top1_mean = rng.uniform(0.9, 0.93)
        self._top1 = self._top1_mean
        self._f1_gap = rng.uniform(0.01, 0.02)
        self._capacity = [
            Reading(3, _FLASH, float(p.flash)),
            Reading(3, _PSRAM, float(p.psram)),
            Reading(3, _SRAM, float(p.sram)),
        ]

    def _target_temp(self, load: float) -> float:
        return self._ambient + 6.0 + 22.0 * load + self._p.heat

    def _retime(self, elapsed_ms: int) -> None:
        super()._retime(elapsed_ms)
        self._k_temp = math.exp(-self._s / 90.0)
        self._k_acc, self._n_acc = _ou(self._s, 1200.0, 0.006)

    def read(self, elapsed_ms: int) -> list[Reading]:
        load = self._step(elapsed_ms)
        r, p, s = self._r, self._p, self._s
        # The firmware drops the CPU clock above 80 C: fewer inferences, each one slower.
        throttled = self._temp >= _THROTTLE_C
        sram = self._used(self._noisy(self._sram_share + 0.15 * load, 0.005))
        n = _events(r, (5.0 + 45.0 * load) * (_THROTTLE if throttled else 1.0), s)
        self._total += n
        self._hist.observe(n, self._median_s * self._slowdown(load, sram, throttled))
        self._temp = self._heat(self._temp, self._target_temp(load), self._k_temp, 2.0 * load)
        if self._collapsed:
            self._top1 = _lag(self._top1, self._collapse_to, self._k_collapse)
            top1 = self._noisy(self._top1, 0.004)
        else:
            self._top1 = _clamp(_revert(r, self._top1, self._top1_mean, self._k_acc,
                                        self._n_acc), 0.885, 0.95)
            top1 = self._top1
        f1 = _clamp(self._noisy(top1 - self._f1_gap, 0.003), 0.0, 0.95)
        if self._filling and self._flash_share < 0.98:
            self._flash_share = min(0.98, self._flash_share + _FLASH_FILL_PER_S / 100.0 * s)
        # The radio wakes in bursts to sync; most of the time it idles.
        radio = 115.0 + 10.0 * r() if r() < 0.15 else 8.0 + 4.0 * r()
        return [
            Reading(0, (), self._total),
            Reading(1, (), self._hist.value()),
            Reading(2, _FLASH, float(round(self._flash_share * p.flash))),
            Reading(2, _PSRAM, float(round((0.2 + 0.3 * load) * p.psram))),
            Reading(2, _SRAM, float(round(sram * p.sram))),
            *self._capacity,
            Reading(4, (), round(self._noisy(self._temp, _TEMP_NOISE), 2)),
            Reading(_LIQUID_CPU, _CORE0, round(self._noisy(12.0 + 80.0 * load, 2.0), 2)),
            Reading(_LIQUID_CPU, _CORE1, round(self._noisy(12.0 + 55.0 * load, 2.0), 2)),
            Reading("liquid_model_accuracy", _F1, round(f1, 4)),
            Reading("liquid_model_accuracy", _TOP1, round(top1, 4)),
            Reading(_LIQUID_MW, _CPU, round(self._noisy(
                p.cpu_mw + p.cpu_load_mw * load * (_THROTTLE if throttled else 1.0), 1.0), 2)),
            Reading(_LIQUID_MW, _RADIO, round(radio, 2)),
            Reading(_LIQUID_MW, _SENSOR, round(self._noisy(5.0, 0.3), 2)),
        ]


# --- 2. audio-nets: keyword spotting --------------------------------------------------------

_AUDIO_METRICS = (
    MetricDef(0, "audio_inference_total", MetricType.COUNTER),
    MetricDef(1, "audio_keywords_detected_total", MetricType.COUNTER),
    MetricDef(2, "audio_inference_latency_ms", MetricType.GAUGE),
    MetricDef(3, "audio_power_milliwatts", MetricType.GAUGE),
    MetricDef(4, "device_battery_percent", MetricType.GAUGE),
    MetricDef(5, "audio_model_accuracy", MetricType.GAUGE),
    MetricDef(6, "device_temperature_celsius", MetricType.GAUGE),
)


@dataclass(frozen=True, slots=True)
class _AudioPlatform:
    ram: int  # bytes
    power_mw: float
    power_rise_mw: float


_AUDIO_PLATFORMS = {
    "stm32f4": _AudioPlatform(192 * _KIB, 0.55, 0.45),
    "nrf52840": _AudioPlatform(256 * _KIB, 0.44, 0.36),
}

_WINDOW_MS = 250  # one inference per 250 ms audio window
# A 40 mAh 3.7 V cell: lasts about a week at under a milliwatt, so a fleet shows drains and swaps.
_BATTERY_MWH = 40.0 * 3.7


class _AudioNetsModel(_Model):
    profile = "audio-nets"
    # flash-fill: the device's logs fill its flash. Overheat: no throttling, these parts have no
    # thermal management (a hot one just runs hot).
    supported = _ALL_FAULTS
    _typical_load = 0.3  # speech activity: the devices' means are 0.15-0.45

    def __init__(self, rng: random.Random, platform: str) -> None:
        _check_platform(self.profile, _AUDIO_PLATFORMS, platform)
        super().__init__(rng)
        self._p = _AUDIO_PLATFORMS[platform]
        (baseline,) = LATENCY_BASELINES[self.profile][platform].values()
        self._latency_ms = 1000.0 * baseline.latency_s
        # Load here is speech activity: how much of the time the microphone hears speech.
        self._load_mean = rng.uniform(0.15, 0.45)
        self._audio_ms = 0  # audio not yet filling a whole window
        self._inferences = 0.0
        self._detections = 0.0
        self._battery_mwh = _BATTERY_MWH * rng.uniform(0.2, 1.0)
        self._ambient = rng.uniform(19.0, 27.0)
        self._temp = self._ambient + 1.5 + 5.0 * self._load
        self._mem_share = rng.uniform(0.66, 0.72)
        self._flash = rng.uniform(45.0, 70.0)
        self._acc_mean = rng.uniform(0.92, 0.94)
        self._acc = self._acc_mean
        self._drift_mean = rng.uniform(0.05, 0.15)
        self._drift = self._drift_mean
        self._fp_base = rng.uniform(0.008, 0.014)
        self._fp = self._fp_base
        self._uptime_s = 0.0
        # Where a collapsed model ends up: drifted inputs, many false alarms, unsure detections.
        self._collapse_drift = rng.uniform(0.6, 0.85)
        self._collapse_fp = rng.uniform(0.1, 0.2)
        self._collapse_conf = rng.uniform(0.52, 0.65)

    def _retime(self, elapsed_ms: int) -> None:
        super()._retime(elapsed_ms)
        s = self._s
        self._k_temp = math.exp(-s / 120.0)
        self._k_acc, self._n_acc = _ou(s, 1200.0, 0.006)
        self._k_drift, self._n_drift = _ou(s, 900.0, 0.04)
        self._k_flash, self._n_flash = _ou(s, 3600.0, 3.0)

    def read(self, elapsed_ms: int) -> list[Reading]:
        activity = self._step(elapsed_ms)
        r, p, s = self._r, self._p, self._s
        self._uptime_s += s
        self._audio_ms += max(0, elapsed_ms)
        windows, self._audio_ms = divmod(self._audio_ms, _WINDOW_MS)
        self._inferences += windows
        if self._collapsed:
            self._acc = _lag(self._acc, self._collapse_to, self._k_collapse)
            self._drift = _lag(self._drift, self._collapse_drift, self._k_collapse)
            accuracy = self._noisy(self._acc, 0.004)
            drift = self._noisy(self._drift, 0.01)
            self._fp = fp = _lag(self._fp, self._collapse_fp, self._k_collapse)
            confidence = self._noisy(self._collapse_conf, 0.01)
        else:
            self._acc = _clamp(_revert(r, self._acc, self._acc_mean, self._k_acc, self._n_acc),
                               0.9, 0.96)
            self._drift = _clamp(_revert(r, self._drift, self._drift_mean, self._k_drift,
                                         self._n_drift), 0.0, 0.3)
            accuracy, drift = self._acc, self._drift
            self._fp = fp = _clamp(
                self._noisy(self._fp_base + 0.01 * activity + 0.02 * drift, 0.002), 0.005, 0.03)
            confidence = _clamp(self._noisy(0.93 - 0.3 * drift, 0.01), 0.8, 0.95)
        # Detections: the speech that holds keywords, plus false alarms.
        self._detections += _events(r, 0.015 + 0.06 * activity + 0.5 * fp, s)
        used = self._used(self._noisy(self._mem_share + 0.08 * activity, 0.003))
        latency = self._latency_ms * self._slowdown(activity, used)
        power = self._noisy(p.power_mw + p.power_rise_mw * activity, 0.015)
        self._battery_mwh -= power * s / 3600.0
        if self._battery_mwh < 0.05 * _BATTERY_MWH:
            self._battery_mwh = _BATTERY_MWH  # swapped by a technician
        self._temp = self._heat(self._temp, self._ambient + 1.5 + 5.0 * activity, self._k_temp)
        if self._filling:
            self._flash = min(98.0, self._flash + _FLASH_FILL_PER_S * s)
        else:
            self._flash = _clamp(_revert(r, self._flash, 57.0, self._k_flash, self._n_flash),
                                 40.0, 80.0)
        used *= p.ram
        return [
            Reading(0, (), self._inferences),
            Reading(1, (), self._detections),
            Reading(2, (), round(latency, 2)),
            Reading(3, (), round(power, 4)),
            Reading(4, (), round(100.0 * self._battery_mwh / _BATTERY_MWH, 4)),
            Reading(5, (), round(accuracy, 4)),
            Reading(6, (), round(self._noisy(self._temp, _TEMP_NOISE), 2)),
            # 16 kHz audio kept up with, plus the DMA backlog drained at each window.
            Reading("audio_throughput_samples_per_second", (), round(16000.0 + 64.0 * r(), 1)),
            Reading("audio_memory_usage_bytes", (), float(round(used))),
            Reading("audio_free_ram_kilobytes", (), round((p.ram - used) / 1024.0, 2)),
            Reading("audio_cpu_usage_percent", (),
                    round(_clamp(self._noisy(22.0 + 45.0 * activity, 1.5), 20.0, 70.0), 2)),
            Reading("audio_energy_per_inference_microjoules", (),
                    round(power * 1000.0 * _WINDOW_MS / 1000.0, 2)),
            Reading("audio_battery_hours_remaining", (), round(self._battery_mwh / power, 2)),
            Reading("audio_false_positive_rate", (), round(fp, 4)),
            Reading("audio_confidence", (), round(confidence, 4)),
            Reading("audio_drift_score", (), round(_clamp(drift, 0.0, 1.0), 4)),
            Reading("device_flash_usage_percent", (), round(self._flash, 2)),
            Reading("device_uptime_seconds", (), round(self._uptime_s, 3)),
        ]


# --- 3. tiny-llm: small LLMs on microcontrollers --------------------------------------------

_TINY_LLM_METRICS = (
    MetricDef(0, "model_tokens_generated_total", MetricType.COUNTER),
    MetricDef(1, "device_temperature_celsius", MetricType.GAUGE),
    MetricDef(2, "device_memory_usage_bytes", MetricType.GAUGE),
    MetricDef(3, "device_memory_total_bytes", MetricType.GAUGE),
)


@dataclass(frozen=True, slots=True)
class _LlmPlatform:
    memory: int  # bytes
    power_mw: float  # at 0 % CPU
    power_cpu_mw: float  # added at 100 % CPU


_LLM_PLATFORMS = {
    "esp32-s3": _LlmPlatform(8 * _MIB + 512 * _KIB, 150.0, 230.0),
    "stm32h7": _LlmPlatform(1 * _MIB, 150.0, 200.0),
    "riscv-k230": _LlmPlatform(512 * _MIB, 170.0, 270.0),
}

_SENSOR_BOARD, _SENSOR_CPU = _labels(sensor_location="board"), _labels(sensor_location="cpu")


class _TinyLlmModel(_Model):
    profile = "tiny-llm"
    # No accuracy-collapse: the profiler measures speed, memory and power, not output quality,
    # so no metric of docs/seeds.md could show it.
    supported = frozenset({ModelFault.OVERHEAT, ModelFault.MEMORY_LEAK})

    def __init__(self, rng: random.Random, platform: str) -> None:
        _check_platform(self.profile, _LLM_PLATFORMS, platform)
        super().__init__(rng)
        p = self._p = _LLM_PLATFORMS[platform]
        (baseline,) = LATENCY_BASELINES[self.profile][platform].values()
        self._nominal_tps = baseline.throughput
        self._baseline_p95_ms = 1000.0 * baseline.latency_s
        self._generating = rng.random() < 0.5
        self._ambient = rng.uniform(22.0, 27.0)
        cpu = self._cpu(self._load)
        self._cpu_temp = self._ambient + 13.0 + 0.25 * cpu
        self._tokens = 0.0
        self._mem_share = rng.uniform(0.52, 0.62)
        self._p95_ms = self._baseline_p95_ms * self._unit  # until it generates
        self._total = Reading(3, (), float(p.memory))

    def _cpu(self, load: float) -> float:
        """CPU use: background work (the load walk) plus the generation loop when it runs."""
        return 10.0 + 15.0 * load + (65.0 if self._generating else 0.0)

    def _retime(self, elapsed_ms: int) -> None:
        super()._retime(elapsed_ms)
        s = self._s
        self._k_temp = math.exp(-s / 45.0)
        # Generation sessions of ~45 s, gaps of ~30 s.
        self._p_stop = 1.0 - math.exp(-s / 45.0)
        self._p_start = 1.0 - math.exp(-s / 30.0)

    def read(self, elapsed_ms: int) -> list[Reading]:
        load = self._step(elapsed_ms)
        r, p, s = self._r, self._p, self._s
        if r() < (self._p_stop if self._generating else self._p_start):
            self._generating = not self._generating
        cpu = _clamp(self._noisy(self._cpu(load), 1.5), 10.0, 95.0)
        self._cpu_temp = self._heat(self._cpu_temp, self._ambient + 13.0 + 0.25 * cpu,
                                    self._k_temp, cpu / 100.0)
        # The SoC drops its clock above 80 C.
        throttled = self._cpu_temp >= _THROTTLE_C
        used = self._used(self._noisy(self._mem_share + (0.12 if self._generating else 0.0),
                                      0.004))
        tps = 0.0
        if self._generating:
            slowdown = self._slowdown(load, used, throttled)  # of one token
            tps = self._nominal_tps / slowdown
            # The p95 of the tokens of one interval: its own sampling noise on top.
            self._p95_ms = self._baseline_p95_ms * slowdown * self._noisy(1.0, _JITTER / 2.0)
            self._tokens += _events(r, tps, s)
        dynamic_mw = p.power_cpu_mw * cpu / 100.0 * (_THROTTLE if throttled else 1.0)
        cpu_temp = self._noisy(self._cpu_temp, _TEMP_NOISE)
        board = self._ambient + 0.35 * (self._cpu_temp - self._ambient)
        return [
            Reading(0, (), self._tokens),
            Reading(1, _SENSOR_BOARD, round(self._noisy(board, _TEMP_NOISE), 2)),
            Reading(1, _SENSOR_CPU, round(cpu_temp, 2)),
            Reading(2, (), float(round(used * p.memory))),
            self._total,
            Reading("model_tokens_per_second", (), round(tps, 2)),
            Reading("model_latency_p95_ms", (), round(self._p95_ms, 2)),
            Reading("device_cpu_utilization_percent", (), round(cpu, 2)),
            Reading("device_power_consumption_mw", (),
                    round(self._noisy(p.power_mw + dynamic_mw, 3.0), 2)),
            # The host link holds: a down flag fires DeviceDisconnected, which a healthy device
            # must not; link trouble is the fleet's business (its flap fault).
            Reading("device_connection_status", (), 1.0),
        ]


# --- 4. edge-tpu: Edge TPU v5 benchmark box -------------------------------------------------

_TPU_METRICS = (
    MetricDef(0, "tpu_inferences_total", MetricType.COUNTER),
    MetricDef(1, "tpu_throughput_fps", MetricType.GAUGE),
    MetricDef(2, "tpu_latency_p99_ms", MetricType.GAUGE),
    MetricDef(3, "tpu_thermal_state", MetricType.GAUGE),
    MetricDef(4, "device_temperature_celsius", MetricType.GAUGE),
)

_MOBILENET, _YOLO = _labels(model="mobilenet_v3"), _labels(model="yolov8n")
_TPU_MEMORY = 4 * _GIB
_TPU_BASELINES = LATENCY_BASELINES["edge-tpu"]["edgetpu-v5-devboard"]
_MOBILENET_FPS = _TPU_BASELINES["mobilenet_v3"].throughput
_MOBILENET_P99_MS = 1000.0 * _TPU_BASELINES["mobilenet_v3"].latency_s
_YOLO_FPS = _TPU_BASELINES["yolov8n"].throughput
_YOLO_P99_MS = 1000.0 * _TPU_BASELINES["yolov8n"].latency_s


class _EdgeTpuModel(_Model):
    profile = "edge-tpu"
    # accuracy-collapse shows as failed output checks: the suite compares results with golden
    # outputs and counts mismatches as failed inferences (tpu_error_rate).
    supported = _COMMON_FAULTS
    _load_lo = 0.4  # load here is TPU utilization, 40-95 %
    _typical_load = 0.675

    def __init__(self, rng: random.Random, platform: str) -> None:
        _check_platform(self.profile, ("edgetpu-v5-devboard",), platform)
        super().__init__(rng)
        self._load_mean = rng.uniform(0.6, 0.75)
        self._ambient = rng.uniform(24.0, 28.0)
        self._temp = self._ambient + 18.0 + 22.0 * self._load
        self._mobilenet = 0.0
        self._yolo = 0.0
        self._error_rate = 0.001
        self._collapse_errors = rng.uniform(0.25, 0.4)
        self._mem_share = rng.uniform(0.35, 0.42)
        self._capacity = Reading("tpu_memory_capacity_bytes", (), float(_TPU_MEMORY))

    def _retime(self, elapsed_ms: int) -> None:
        super()._retime(elapsed_ms)
        self._k_temp = math.exp(-self._s / 30.0)
        self._k_err, self._n_err = _ou(self._s, 600.0, 0.0002)

    def read(self, elapsed_ms: int) -> list[Reading]:
        u = self._step(elapsed_ms)
        r, s = self._r, self._s
        self._temp = temp = self._heat(self._temp, self._ambient + 18.0 + 22.0 * u, self._k_temp,
                                       2.0 * u)
        state = 3.0 if temp >= 90.0 else 2.0 if temp >= 80.0 else 1.0 if temp >= 70.0 else 0.0
        throttled = state >= 2.0
        speed = _THROTTLE if throttled else 1.0
        # Host memory: a leaking runtime feeds the TPU slower once the host is short of it.
        used = self._used(self._noisy(self._mem_share + 0.15 * u, 0.005))
        mobilenet = self._slowdown(u, used, throttled)
        yolo = self._slowdown(u, used, throttled)
        mobilenet_fps = _MOBILENET_FPS / mobilenet
        yolo_fps = _YOLO_FPS / yolo
        self._mobilenet += _events(r, mobilenet_fps, s)
        self._yolo += _events(r, yolo_fps, s)
        power = self._noisy(1.4 + 3.0 * u, 0.05) * (0.7 if speed < 1.0 else 1.0)
        if self._collapsed:
            self._error_rate = _lag(self._error_rate, self._collapse_errors, self._k_collapse)
            errors = self._noisy(self._error_rate, 0.01)
        else:
            self._error_rate = _clamp(_revert(r, self._error_rate, 0.001, self._k_err,
                                              self._n_err), 0.0002, 0.003)
            errors = self._error_rate
        return [
            Reading(0, _MOBILENET, self._mobilenet),
            Reading(0, _YOLO, self._yolo),
            Reading(1, _MOBILENET, round(mobilenet_fps, 1)),
            Reading(1, _YOLO, round(yolo_fps, 1)),
            # p99: the slowest of many inferences, so noisier than the mean.
            Reading(2, _MOBILENET,
                    round(_MOBILENET_P99_MS * mobilenet * self._noisy(1.0, 2 * _JITTER), 3)),
            Reading(2, _YOLO, round(_YOLO_P99_MS * yolo * self._noisy(1.0, 2 * _JITTER), 3)),
            Reading(3, (), state),
            Reading(4, (), round(self._noisy(self._temp, _TEMP_NOISE), 2)),
            Reading("tpu_utilization_percent", (), round(100.0 * u, 2)),
            Reading("tpu_tops_per_watt", (),
                    round(self._noisy(3.1 - 0.5 * (u - 0.4), 0.02) * (0.9 if speed < 1 else 1), 3)),
            Reading("tpu_power_watts", (), round(power, 3)),
            Reading("tpu_error_rate", (), round(errors, 5)),
            Reading("tpu_memory_usage_bytes", (), float(round(used * _TPU_MEMORY))),
            self._capacity,
        ]


# --- 5. photon: photonic accelerator --------------------------------------------------------

_PHOTON_METRICS = (
    MetricDef(0, "photon_inference_total", MetricType.COUNTER),
    MetricDef(1, "photon_runtime_errors_total", MetricType.COUNTER),
    MetricDef(2, "photon_device_status", MetricType.GAUGE),
    MetricDef(3, "photon_device_temperature_celsius", MetricType.GAUGE),
    MetricDef(4, "photon_calibration_drift", MetricType.GAUGE),
)

_PHOTON_MEMORY = 8 * _GIB
_DRIFT_LIMIT = 0.05  # above it the device recalibrates
_CALIBRATION_S = 15.0
_RETRY_S = 60.0  # after a failed calibration
_PHOTON_FAULT_C = 85.0  # the laser interlock trips: status 0, no light, no inferences

_STATUS_FAULT, _STATUS_READY, _STATUS_BUSY, _STATUS_CALIBRATING = 0.0, 1.0, 2.0, 3.0


class _PhotonModel(_Model):
    profile = "photon"
    # accuracy-collapse shows as calibration that no longer holds: the phase drift that sets
    # the accelerator's numerical accuracy climbs past the limit, recalibration fails to bring
    # it back, and mismatching results count as runtime errors.
    supported = _COMMON_FAULTS

    def __init__(self, rng: random.Random, platform: str) -> None:
        _check_platform(self.profile, ("photon-lt1",), platform)
        super().__init__(rng)
        self._ambient = rng.uniform(22.0, 26.0)
        self._temp = self._ambient + 13.0 + 8.0 * self._load
        self._drift_rate = rng.uniform(0.5e-4, 1.5e-4)  # per second: recalibrates every 5-17 min
        self._drift = rng.uniform(0.0, _DRIFT_LIMIT)
        self._calibrating_s = 0.0  # time left in the running calibration
        self._retry_s = 0.0  # time before a failed calibration is tried again
        self._collapse_drift = rng.uniform(0.12, 0.18)
        self._laser = rng.uniform(9.5, 10.5)
        self._laser_mean = self._laser
        self._inferences = 0.0
        self._errors = 0.0
        self._mem_share = rng.uniform(0.34, 0.4)
        self._capacity = Reading("photon_memory_capacity_bytes", (), float(_PHOTON_MEMORY))
        (baseline,) = LATENCY_BASELINES[self.profile][platform].values()
        self._baseline_s = baseline.latency_s
        self._latency = baseline.latency_s * self._unit

    def _retime(self, elapsed_ms: int) -> None:
        super()._retime(elapsed_ms)
        self._k_temp = math.exp(-self._s / 60.0)
        self._k_laser, self._n_laser = _ou(self._s, 600.0, 0.2)

    def read(self, elapsed_ms: int) -> list[Reading]:
        load = self._step(elapsed_ms)
        r, s = self._r, self._s
        self._temp = self._heat(self._temp, self._ambient + 13.0 + 8.0 * load, self._k_temp,
                                2.0 * load)
        # Heat makes the phases drift faster.
        drift_rate = self._drift_rate * (1.0 + max(0.0, self._temp - 40.0) / 10.0)
        if self._collapsed:
            self._drift = _lag(self._drift, self._collapse_drift, self._k_collapse)
        elif self._calibrating_s <= 0.0:
            self._drift += drift_rate * s * (0.5 + r())
        if self._calibrating_s > 0.0:
            self._calibrating_s -= s
            if self._calibrating_s <= 0.0:
                if self._collapsed:
                    self._retry_s = _RETRY_S
                else:
                    self._drift = 0.005 * r()
        elif self._retry_s > 0.0:
            self._retry_s -= s
        elif self._drift > _DRIFT_LIMIT:
            self._calibrating_s = _CALIBRATION_S
            if not self._collapsed:
                self._drift = _DRIFT_LIMIT  # caught at the limit
        failed = self._temp >= _PHOTON_FAULT_C
        calibrating = self._calibrating_s > 0.0
        queue = _clamp(self._noisy(36.0 * load, 3.0), 0.0, 40.0)
        if failed:
            status, rate, laser = _STATUS_FAULT, 0.0, 0.0
            queue = 40.0
        elif calibrating:
            status, rate = _STATUS_CALIBRATING, 0.0
            queue = min(40.0, queue + 10.0)
        else:
            status = _STATUS_BUSY if queue >= 1.0 else _STATUS_READY
            rate = 1000.0 + 7000.0 * load
        if not failed:
            self._laser = _clamp(_revert(r, self._laser, self._laser_mean, self._k_laser,
                                         self._n_laser), 8.0, 12.0)
            laser = self._laser
        self._inferences += _events(r, rate, s)
        self._errors += _events(r, 0.3 if self._collapsed else 1.0 / 3600.0, s)
        # The optical path takes the same time for every inference; queueing is not in it
        # (photon_queue_depth shows the backlog). Host buffers short of memory slow the transfers.
        used = self._used(self._noisy(self._mem_share + 0.15 * load, 0.005))
        slowdown = self._slowdown(load, used)
        if rate > 0.0:  # no inference, no new measurement: the last one stands
            self._latency = self._baseline_s * slowdown
        latency = self._latency
        return [
            Reading(0, (), self._inferences),
            Reading(1, (), self._errors),
            Reading(2, (), status),
            Reading(3, (), round(self._noisy(self._temp, _TEMP_NOISE), 2)),
            Reading(4, (), round(self._drift, 4)),
            Reading("photon_optical_power_mw", (), round(laser, 3)),
            Reading("photon_inference_latency_seconds", (), round(latency, 7)),
            Reading("photon_queue_depth", (), float(round(queue))),
            Reading("photon_memory_usage_bytes", (), float(round(used * _PHOTON_MEMORY))),
            self._capacity,
        ]


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="liquid-edge",
            description="Liquid Edge LLN kit: liquid neural networks for robotics",
            platforms=tuple(_LIQUID_PLATFORMS),
            firmware="2.1.0",
            model_name="lnn-anomaly-v3",
            metrics=_LIQUID_METRICS,
            new_model=_LiquidEdgeModel,
            model_faults=_LiquidEdgeModel.supported,
        ),
        Profile(
            name="audio-nets",
            description="liquid-audio-nets: always-on keyword spotting on battery",
            platforms=tuple(_AUDIO_PLATFORMS),
            firmware="1.4.2",
            model_name="kws-lnn-12",
            metrics=_AUDIO_METRICS,
            new_model=_AudioNetsModel,
            model_faults=_AudioNetsModel.supported,
        ),
        Profile(
            name="tiny-llm",
            description="tiny-llm-edge-profiler: small LLMs on microcontrollers",
            platforms=tuple(_LLM_PLATFORMS),
            firmware="0.9.1",
            model_name="stories-260k-q8",
            metrics=_TINY_LLM_METRICS,
            new_model=_TinyLlmModel,
            model_faults=_TinyLlmModel.supported,
        ),
        Profile(
            name="edge-tpu",
            description="Edge TPU v5 benchmark box",
            platforms=("edgetpu-v5-devboard",),
            firmware="5.0.3",
            model_name="benchmark-suite",
            metrics=_TPU_METRICS,
            new_model=_EdgeTpuModel,
            model_faults=_EdgeTpuModel.supported,
        ),
        Profile(
            name="photon",
            description="photon-mlir-bridge photonic accelerator",
            platforms=("photon-lt1",),
            firmware="0.4.0",
            model_name="resnet18-photonic",
            metrics=_PHOTON_METRICS,
            new_model=_PhotonModel,
            model_faults=_PhotonModel.supported,
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
