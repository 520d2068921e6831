"""Seed profile 4, edge-tpu: Edge TPU v5 benchmark box (docs/seeds.md, section 4)."""

from __future__ import annotations

import random

from device_protocol.frames import MetricDef, MetricType
from firmware_sim.profiles import base, dynamics
from firmware_sim.profiles.base import Baseline, Reading, labels
from firmware_sim.profiles.dynamics import TEMP_NOISE, ModelBase, clamp, events, lag, ou, revert

# Baselines (platform -> model -> Baseline): the latency is tpu_latency_p99_ms per network,
# here in seconds; the throughput is in frames per second.
BASELINES: dict[str, dict[str, Baseline]] = {
    "edgetpu-v5-devboard": {"mobilenet_v3": Baseline(0.0016, 892.0),
                            "yolov8n": Baseline(0.0075, 187.0)},
}

_TPU_METRICS = (
    MetricDef(0, "tpu_inferences_total", MetricType.COUNTER),
    MetricDef(1, "tpu_throughput_fps", MetricType.GAUGE),
    MetricDef(2, "tpu_latency_p99_ms", MetricType.GAUGE),
    MetricDef(3, "tpu_thermal_state", MetricType.GAUGE),
    MetricDef(4, "device_temperature_celsius", MetricType.GAUGE),
)

_MOBILENET, _YOLO = labels(model="mobilenet_v3"), labels(model="yolov8n")
_TPU_MEMORY = 4 * base.GIB
_TPU_BASELINES = BASELINES["edgetpu-v5-devboard"]
_MOBILENET_FPS = _TPU_BASELINES["mobilenet_v3"].throughput
_MOBILENET_P99_MS = 1000.0 * _TPU_BASELINES["mobilenet_v3"].latency_s
_YOLO_FPS = _TPU_BASELINES["yolov8n"].throughput
_YOLO_P99_MS = 1000.0 * _TPU_BASELINES["yolov8n"].latency_s
_P99_JITTER = 2 * dynamics.JITTER  # p99: the slowest of many inferences, so noisier than the mean


class _EdgeTpuModel(ModelBase):
    profile = "edge-tpu"
    # accuracy-collapse shows as failed output checks: the suite compares results with golden
    # outputs and counts mismatches as failed inferences (tpu_error_rate).
    platforms = ("edgetpu-v5-devboard",)
    supported = base.COMMON_FAULTS
    _load_lo = 0.4  # load here is TPU utilization, 40-95 %
    _typical_load = 0.675
    _temp_tau_s = 30.0

    def __init__(self, rng: random.Random, platform: str) -> None:
        super().__init__(rng, platform)
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
        self._k_err, self._n_err = ou(self._s, 600.0, 0.0002)

    def read(self, elapsed_ms: int) -> list[Reading]:
        u = self._step(elapsed_ms)
        r, s = self._r, self._s
        self._temp = temp = self._heat(self._temp, self._ambient + 18.0 + 22.0 * u, 2.0 * u)
        state = 3.0 if temp >= 90.0 else 2.0 if temp >= 80.0 else 1.0 if temp >= 70.0 else 0.0
        throttled = state >= 2.0
        speed = dynamics.THROTTLE if throttled else 1.0
        # Host memory: a leaking runtime feeds the TPU slower once the host is short of it.
        used = self._used(self._noisy(self._mem_share + 0.15 * u, 0.005))
        mobilenet = self._slowdown(u, used, throttled)
        yolo = self._slowdown(u, used, throttled)
        mobilenet_fps = _MOBILENET_FPS / mobilenet
        yolo_fps = _YOLO_FPS / yolo
        self._mobilenet += events(r, mobilenet_fps, s)
        self._yolo += events(r, yolo_fps, s)
        power = self._noisy(1.4 + 3.0 * u, 0.05) * (0.7 if speed < 1.0 else 1.0)
        if self._collapsed:
            self._error_rate = lag(self._error_rate, self._collapse_errors, self._k_collapse)
            errors = self._noisy(self._error_rate, 0.01)
        else:
            self._error_rate = clamp(revert(r, self._error_rate, 0.001, self._k_err,
                                              self._n_err), 0.0002, 0.003)
            errors = self._error_rate
        return [
            Reading(0, _MOBILENET, self._mobilenet),
            Reading(0, _YOLO, self._yolo),
            Reading(1, _MOBILENET, round(mobilenet_fps, 1)),
            Reading(1, _YOLO, round(yolo_fps, 1)),
            Reading(2, _MOBILENET,
                    round(_MOBILENET_P99_MS * mobilenet * self._noisy(1.0, _P99_JITTER), 3)),
            Reading(2, _YOLO, round(_YOLO_P99_MS * yolo * self._noisy(1.0, _P99_JITTER), 3)),
            Reading(3, (), state),
            Reading(4, (), round(self._noisy(self._temp, TEMP_NOISE), 2)),
            Reading("tpu_utilization_percent", (), round(100.0 * u, 2)),
            Reading("tpu_tops_per_watt", (),
                    round(self._noisy(3.1 - 0.5 * (u - 0.4), 0.02) * (0.9 if speed < 1 else 1), 3)),
            Reading("tpu_power_watts", (), round(power, 3)),
            Reading("tpu_error_rate", (), round(errors, 5)),
            Reading("tpu_memory_usage_bytes", (), float(round(used * _TPU_MEMORY))),
            self._capacity,
        ]


PROFILE = _EdgeTpuModel.declare("Edge TPU v5 benchmark box", firmware="5.0.3",
                                model_name="benchmark-suite", metrics=_TPU_METRICS)
