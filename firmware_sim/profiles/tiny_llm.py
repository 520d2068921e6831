"""Seed profile 3, tiny-llm: small LLMs on microcontrollers (docs/seeds.md, section 3)."""

from __future__ import annotations

import math
import random

from device_protocol.frames import MetricDef, MetricType
from firmware_sim.profiles import base, dynamics
from firmware_sim.profiles.base import Baseline, ModelFault, Reading, labels
from firmware_sim.profiles.dynamics import JITTER, TEMP_NOISE, ModelBase, clamp, events

# Baselines (platform -> model -> Baseline): the latency is model_latency_p95_ms (per-token
# p95), here in seconds; the throughput is tokens/s while generating (the per-token p95 is
# 1.32 x the mean of 1 / throughput).
BASELINES: dict[str, dict[str, Baseline]] = {
    "esp32-s3": {"stories-260k-q8": Baseline(0.12, 11.0)},
    "stm32h7": {"stories-260k-q8": Baseline(0.08, 16.5)},
    "riscv-k230": {"stories-260k-q8": Baseline(0.04, 33.0)},
}

_TINY_LLM_METRICS = (
    MetricDef(0, "model_tokens_generated_total", MetricType.COUNTER),
    MetricDef(1, "device_temperature_celsius", MetricType.GAUGE),
    MetricDef(2, "device_memory_usage_bytes", MetricType.GAUGE),
    MetricDef(3, "device_memory_total_bytes", MetricType.GAUGE),
)

_LLM_PLATFORMS = {
    "esp32-s3": base.Board(8 * base.MIB + 512 * base.KIB, 150.0, 230.0),
    "stm32h7": base.Board(1 * base.MIB, 150.0, 200.0),
    "riscv-k230": base.Board(512 * base.MIB, 170.0, 270.0),
}

_SENSOR_BOARD, _SENSOR_CPU = labels(sensor_location="board"), labels(sensor_location="cpu")


class _TinyLlmModel(ModelBase):
    profile = "tiny-llm"
    # No accuracy-collapse: the profiler measures speed, memory and power, not output quality,
    # so no metric of docs/seeds.md could show it.
    platforms = _LLM_PLATFORMS
    supported = frozenset({ModelFault.OVERHEAT, ModelFault.MEMORY_LEAK})
    _temp_tau_s = 45.0

    def __init__(self, rng: random.Random, platform: str) -> None:
        super().__init__(rng, platform)
        p = self._p = _LLM_PLATFORMS[platform]
        (baseline,) = BASELINES[platform].values()
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
        # Generation sessions of ~45 s, gaps of ~30 s.
        self._p_stop = 1.0 - math.exp(-s / 45.0)
        self._p_start = 1.0 - math.exp(-s / 30.0)

    def read(self, elapsed_ms: int) -> list[Reading]:
        load = self._step(elapsed_ms)
        r, p, s = self._r, self._p, self._s
        if r() < (self._p_stop if self._generating else self._p_start):
            self._generating = not self._generating
        cpu = clamp(self._noisy(self._cpu(load), 1.5), 10.0, 95.0)
        self._cpu_temp = self._heat(self._cpu_temp, self._ambient + 13.0 + 0.25 * cpu, cpu / 100.0)
        # The SoC drops its clock above 80 C.
        throttled = self._cpu_temp >= dynamics.THROTTLE_C
        used = self._used(self._noisy(self._mem_share + (0.12 if self._generating else 0.0),
                                      0.004))
        tps = 0.0
        if self._generating:
            slowdown = self._slowdown(load, used, throttled)  # of one token
            tps = self._nominal_tps / slowdown
            # The p95 of the tokens of one interval: its own sampling noise on top.
            self._p95_ms = self._baseline_p95_ms * slowdown * self._noisy(1.0, JITTER / 2.0)
            self._tokens += events(r, tps, s)
        dynamic_mw = p.power_load_mw * cpu / 100.0 * (dynamics.THROTTLE if throttled else 1.0)
        cpu_temp = self._noisy(self._cpu_temp, TEMP_NOISE)
        board = self._ambient + 0.35 * (self._cpu_temp - self._ambient)
        return [
            Reading(0, (), self._tokens),
            Reading(1, _SENSOR_BOARD, round(self._noisy(board, TEMP_NOISE), 2)),
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


PROFILE = _TinyLlmModel.declare("tiny-llm-edge-profiler: small LLMs on microcontrollers",
                                firmware="0.9.1", model_name="stories-260k-q8",
                                metrics=_TINY_LLM_METRICS)
