"""Seed profile 1, liquid-edge: liquid neural networks for robotics (docs/seeds.md, section 1)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from device_protocol.frames import MetricDef, MetricType
from firmware_sim.profiles import base, dynamics
from firmware_sim.profiles.base import Baseline, Reading, labels
from firmware_sim.profiles.dynamics import THROTTLE, ModelBase, clamp, events, lag, ou, revert

# Baselines (platform -> model -> Baseline): the latency is the mean duration of one inference
# (the histogram's _sum / _count).
BASELINES: dict[str, dict[str, Baseline]] = {
    "esp32-s3": {"lnn-anomaly-v3": Baseline(0.018)},
    "stm32h7": {"lnn-anomaly-v3": Baseline(0.011)},
    "rpi-cm4": {"lnn-anomaly-v3": Baseline(0.006)},
}

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


_KIB, _MIB, _GIB = base.KIB, base.MIB, base.GIB
_LIQUID_PLATFORMS = {
    "esp32-s3": _LiquidPlatform(512 * _KIB, 8 * _MIB, 16 * _MIB, 80.0, 200.0, 0.0),
    "stm32h7": _LiquidPlatform(1 * _MIB, 8 * _MIB, 2 * _MIB, 90.0, 190.0, 0.0),
    "rpi-cm4": _LiquidPlatform(2 * _GIB, 512 * _MIB, 32 * _GIB, 100.0, 180.0, 3.0),
}
# Inference durations are nearly fixed by the compute: a narrow lognormal around the median.
_LIQUID_SIGMA = 0.08

_FLASH = labels(memory_type="flash")
_PSRAM = labels(memory_type="psram")
_SRAM = labels(memory_type="sram")
_LIQUID_CPU, _LIQUID_MW = "liquid_cpu_usage_percent", "liquid_energy_consumption_milliwatts"
_CORE0, _CORE1 = labels(core="0"), labels(core="1")
_F1, _TOP1 = labels(metric_type="f1"), labels(metric_type="top1")
_CPU, _RADIO = labels(component="cpu"), labels(component="radio")
_SENSOR = labels(component="sensor")


class _LiquidEdgeModel(ModelBase):
    profile = "liquid-edge"
    platforms = _LIQUID_PLATFORMS
    supported = base.ALL_FAULTS  # flash-fill: the flash partition fills with logs
    _temp_tau_s = 90.0

    def __init__(self, rng: random.Random, platform: str) -> None:
        super().__init__(rng, platform)
        p = self._p = _LIQUID_PLATFORMS[platform]
        (baseline,) = BASELINES[platform].values()
        self._ambient = rng.uniform(23.5, 28.0)
        self._temp = self._target_temp(self._load)
        self._total = 0.0
        self._hist = dynamics.Histogram(LIQUID_DURATION_BOUNDS, _LIQUID_SIGMA)
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
        self._k_acc, self._n_acc = ou(self._s, 1200.0, 0.006)

    def read(self, elapsed_ms: int) -> list[Reading]:
        load = self._step(elapsed_ms)
        r, p, s = self._r, self._p, self._s
        # The firmware drops the CPU clock above 80 C: fewer inferences, each one slower.
        throttled = self._temp >= dynamics.THROTTLE_C
        sram = self._used(self._noisy(self._sram_share + 0.15 * load, 0.005))
        n = events(r, (5.0 + 45.0 * load) * (THROTTLE if throttled else 1.0), s)
        self._total += n
        self._hist.observe(n, self._median_s * self._slowdown(load, sram, throttled))
        self._temp = self._heat(self._temp, self._target_temp(load), 2.0 * load)
        if self._collapsed:
            self._top1 = lag(self._top1, self._collapse_to, self._k_collapse)
            top1 = self._noisy(self._top1, 0.004)
        else:
            self._top1 = clamp(revert(r, self._top1, self._top1_mean, self._k_acc,
                                        self._n_acc), 0.885, 0.95)
            top1 = self._top1
        f1 = clamp(self._noisy(top1 - self._f1_gap, 0.003), 0.0, 0.95)
        if self._filling and self._flash_share < 0.98:
            self._flash_share = min(0.98, self._flash_share + dynamics.FLASH_FILL_PER_S / 100.0 * s)
        # The radio wakes in bursts to sync; most of the time it idles.
        radio = 115.0 + 10.0 * r() if r() < 0.15 else 8.0 + 4.0 * r()
        return [
            Reading(0, (), self._total),
            Reading(1, (), self._hist.value()),
            Reading(2, _FLASH, float(round(self._flash_share * p.flash))),
            Reading(2, _PSRAM, float(round((0.2 + 0.3 * load) * p.psram))),
            Reading(2, _SRAM, float(round(sram * p.sram))),
            *self._capacity,
            Reading(4, (), round(self._noisy(self._temp, dynamics.TEMP_NOISE), 2)),
            Reading(_LIQUID_CPU, _CORE0, round(self._noisy(12.0 + 80.0 * load, 2.0), 2)),
            Reading(_LIQUID_CPU, _CORE1, round(self._noisy(12.0 + 55.0 * load, 2.0), 2)),
            Reading("liquid_model_accuracy", _F1, round(f1, 4)),
            Reading("liquid_model_accuracy", _TOP1, round(top1, 4)),
            Reading(_LIQUID_MW, _CPU, round(self._noisy(
                p.cpu_mw + p.cpu_load_mw * load * (THROTTLE if throttled else 1.0), 1.0), 2)),
            Reading(_LIQUID_MW, _RADIO, round(radio, 2)),
            Reading(_LIQUID_MW, _SENSOR, round(self._noisy(5.0, 0.3), 2)),
        ]


PROFILE = _LiquidEdgeModel.declare("Liquid Edge LLN kit: liquid neural networks for robotics",
                                   firmware="2.1.0", model_name="lnn-anomaly-v3",
                                   metrics=_LIQUID_METRICS)
