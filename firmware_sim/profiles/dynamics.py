"""The machinery the five models share: dynamics helpers and `ModelBase`.

Pure: every value comes from the `random.Random` handed to the model, so a seed reproduces a
fleet exactly. The dynamics are simple but shaped like the real thing: load is a mean-reverting
walk that moves the inference rate, CPU use and power; temperatures follow their heat source with
a first-order lag; counters only grow within a boot; batteries drain and get swapped. Every walk
is stepped with its exact solution for the elapsed time, so a device read every second and one
read every five seconds move the same way in simulated time.

The latency of one inference is set by the compute (model and clock), not by the load: a healthy
device runs at its platform's baseline (each profile's `BASELINES`) times a unit-to-unit factor
within +-3 %, at most ~2 % more or less with load (cache and bus contention) and +-1 % jitter. The
alert rules' baseline recording rules carry the same numbers, so "10 % over the baseline"
(PerformanceRegression) is a fault, never a healthy device: throttling (overheat, where the
platform throttles) and allocator pressure (memory-leak past 80 % used) make it.

Noise is triangular (the sum of two uniforms) rather than Gaussian: a third of the cost of
`gauss()`, and bounded, so a healthy device never throws the six-sigma outlier that would fire
an alert. `read()` is on the simulator's hot path (10,000 devices in one process), hence the
per-interval constants cached in `ModelBase._retime` and the readings of constants built once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection

from device_protocol.frames import HistogramValue, MetricDef
from firmware_sim.profiles.base import ModelFault, Profile, Reading, check_platform

_SQRT6 = math.sqrt(6.0)  # (r() + r() - 1) has variance 1/6


def clamp(value: float, lo: float, hi: float) -> float:
    return lo if value < lo else hi if value > hi else value


def ou(seconds: float, tau_s: float, sd: float) -> tuple[float, float]:
    """(keep, kick) of an exact Ornstein-Uhlenbeck step of `seconds`: stationary spread `sd`
    whatever the step, so the reading interval does not change the dynamics."""
    keep = math.exp(-seconds / tau_s)
    return keep, sd * math.sqrt(1.0 - keep * keep) * _SQRT6


def revert(r: Callable[[], float], value: float, mean: float, keep: float, kick: float) -> float:
    """One step of a mean-reverting random walk; (keep, kick) from `ou`."""
    return mean + (value - mean) * keep + (r() + r() - 1.0) * kick


def lag(value: float, target: float, keep: float) -> float:
    """First-order lag (how a temperature follows its heat source); keep = exp(-dt / tau)."""
    return target + (value - target) * keep


def events(r: Callable[[], float], rate_per_s: float, seconds: float) -> int:
    """Whole events in the interval; stochastic rounding keeps the long-run rate exact."""
    return int(rate_per_s * seconds + r())


class Histogram:
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


_LOAD_TAU_S = 300.0  # load wanders over minutes
_LOAD_SD = 0.15
TEMP_NOISE = 0.3  # reported temperatures: sensor noise within +-0.3 C
_HOT_TAU_S = 15.0  # cooling failed: from 30 C to over 85 C in under a minute
_COLLAPSE_TAU_S = 60.0  # accuracy collapse: below 0.8 within a minute, settled in ~5
_LEAK_PER_S = 0.01 / 60.0  # memory leak: 1 % of capacity a minute
FLASH_FILL_PER_S = 6.0 / 60.0  # flash fill: 6 points a minute, 40 -> 98 % in under 10 min
# How long one inference takes, relative to the platform's baseline (see the module docstring).
_UNIT_SPREAD = 0.03  # unit to unit: crystal tolerance, flash wait states, silicon
_LOAD_SLOWDOWN = 0.04  # full load against none: cache and bus contention, interrupts
JITTER = 0.01  # reading to reading, bounded
# Allocator pressure: past 80 % used, fragmentation and compaction (or paging, on a host) cost
# time, up to +30 % from 95 % on: a leak shows as a regression before allocations fail.
_PRESSURE_FROM, _PRESSURE_FULL, _PRESSURE_COST = 0.8, 0.95, 0.3
THROTTLE_C = 80.0  # where a platform throttles: the clock drops above this...
THROTTLE = 0.6  # ...and so does throughput, by 40 % (an inference takes 1 / 0.6 = 1.67 x)


class ModelBase:
    """Faults, the load walk and the per-interval constants, shared by the five models.

    A model class says which profile it is, the platforms it runs on and the faults it accepts;
    `declare` makes its `Profile` from them."""

    profile = ""
    platforms: Collection[str] = ()
    supported: frozenset[ModelFault] = frozenset()
    _load_lo, _load_hi = 0.05, 0.95
    _typical_load = 0.45  # the middle of the fleet's load means: a baseline device runs at it
    _temp_tau_s = 60.0  # how fast its temperature follows the heat source (each model's own)

    @classmethod
    def declare(cls, description: str, firmware: str, model_name: str,
                metrics: tuple[MetricDef, ...]) -> Profile:
        """The profile this model simulates: name, platforms, faults and model from the class."""
        return Profile(name=cls.profile, description=description, platforms=tuple(cls.platforms),
                       firmware=firmware, model_name=model_name, metrics=metrics, new_model=cls,
                       model_faults=cls.supported)

    def __init__(self, rng: random.Random, platform: str) -> None:
        check_platform(self.profile, self.platforms, platform)
        self._r = rng.random
        self._faults: set[ModelFault] = set()
        self._overheat = self._leaking = self._collapsed = self._filling = False
        self._dt_ms = -1
        self._s = 0.0
        self._load_mean = rng.uniform(0.3, 0.6)
        self._load = clamp(self._load_mean + rng.uniform(-0.15, 0.15), self._load_lo,
                            self._load_hi)
        # Fault parameters are drawn now, so that injecting does not shift the random stream.
        self._hot = rng.uniform(91.5, 95.0)  # where the temperature heads when cooling fails
        self._leaked = 0.0  # share of memory capacity lost to a leak
        self._collapse_to = rng.uniform(0.58, 0.66)
        self._unit = rng.uniform(1.0 - _UNIT_SPREAD, 1.0 + _UNIT_SPREAD)

    def read(self, elapsed_ms: int) -> list[Reading]:
        raise NotImplementedError  # each model reads its own metrics

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
        self._k_load, self._n_load = ou(s, _LOAD_TAU_S, _LOAD_SD)
        self._k_temp = math.exp(-s / self._temp_tau_s)
        self._k_hot = math.exp(-s / _HOT_TAU_S)
        self._k_collapse = math.exp(-s / _COLLAPSE_TAU_S)
        self._d_leak = _LEAK_PER_S * s

    def _step(self, elapsed_ms: int) -> float:
        """Advance the common state; returns the new load (within _load_lo.._load_hi)."""
        if elapsed_ms != self._dt_ms:
            self._retime(elapsed_ms)
        load = revert(self._r, self._load, self._load_mean, self._k_load, self._n_load)
        self._load = load = clamp(load, self._load_lo, self._load_hi)
        if self._leaking and self._leaked < 1.0:
            self._leaked += self._d_leak
        return load

    def _used(self, share: float) -> float:
        """A used-memory share with the leak on top, capped at 99 % (the allocator's reserve)."""
        share += self._leaked
        return 0.99 if share > 0.99 else share

    def _heat(self, temp: float, target: float, hot_extra: float = 0.0) -> float:
        """Temperature after one step: towards `target`, or towards ~95 C when cooling failed."""
        if self._overheat:
            return self._hot + hot_extra + (temp - self._hot - hot_extra) * self._k_hot
        return target + (temp - target) * self._k_temp

    def _slowdown(self, load: float, used: float, throttled: bool = False) -> float:
        """How long one inference takes now against the platform's baseline (1.0 = baseline),
        jitter included. `used`: the share of the memory its allocator works in."""
        r = self._r
        factor = self._unit * (1.0 + _LOAD_SLOWDOWN * (load - self._typical_load)) \
            * (1.0 + (r() + r() - 1.0) * JITTER)
        if used > _PRESSURE_FROM:
            factor *= 1.0 + _PRESSURE_COST * min(
                1.0, (used - _PRESSURE_FROM) / (_PRESSURE_FULL - _PRESSURE_FROM))
        return factor / THROTTLE if throttled else factor

    def _noisy(self, value: float, amplitude: float) -> float:
        """`value` give or take `amplitude` (triangular: most of it near `value`)."""
        r = self._r
        return value + (r() + r() - 1.0) * amplitude
