"""Seed profile 5, photon: photonic accelerator (docs/seeds.md, section 5)."""

from __future__ import annotations

import random

from device_protocol.frames import MetricDef, MetricType
from firmware_sim.profiles import base
from firmware_sim.profiles.base import Baseline, Reading
from firmware_sim.profiles.dynamics import TEMP_NOISE, ModelBase, clamp, events, lag, ou, revert

# Baselines (platform -> model -> Baseline): the latency is photon_inference_latency_seconds.
BASELINES: dict[str, dict[str, Baseline]] = {
    "photon-lt1": {"resnet18-photonic": Baseline(0.0001)},
}

_PHOTON_METRICS = (
    MetricDef(0, "photon_inference_total", MetricType.COUNTER),
    MetricDef(1, "photon_runtime_errors_total", MetricType.COUNTER),
    MetricDef(2, "photon_device_status", MetricType.GAUGE),
    MetricDef(3, "photon_device_temperature_celsius", MetricType.GAUGE),
    MetricDef(4, "photon_calibration_drift", MetricType.GAUGE),
)

_PHOTON_MEMORY = 8 * base.GIB
_DRIFT_LIMIT = 0.05  # above it the device recalibrates
_CALIBRATION_S = 15.0
_RETRY_S = 60.0  # after a failed calibration
_PHOTON_FAULT_C = 85.0  # the laser interlock trips: status 0, no light, no inferences

_STATUS_FAULT, _STATUS_READY, _STATUS_BUSY, _STATUS_CALIBRATING = 0.0, 1.0, 2.0, 3.0


class _PhotonModel(ModelBase):
    profile = "photon"
    # accuracy-collapse shows as calibration that no longer holds: the phase drift that sets
    # the accelerator's numerical accuracy climbs past the limit, recalibration fails to bring
    # it back, and mismatching results count as runtime errors.
    platforms = ("photon-lt1",)
    supported = base.COMMON_FAULTS
    _temp_tau_s = 60.0

    def __init__(self, rng: random.Random, platform: str) -> None:
        super().__init__(rng, platform)
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
        (baseline,) = BASELINES[platform].values()
        self._baseline_s = baseline.latency_s
        self._latency = baseline.latency_s * self._unit

    def _retime(self, elapsed_ms: int) -> None:
        super()._retime(elapsed_ms)
        self._k_laser, self._n_laser = ou(self._s, 600.0, 0.2)

    def read(self, elapsed_ms: int) -> list[Reading]:
        load = self._step(elapsed_ms)
        r, s = self._r, self._s
        self._temp = self._heat(self._temp, self._ambient + 13.0 + 8.0 * load, 2.0 * load)
        # Heat makes the phases drift faster.
        drift_rate = self._drift_rate * (1.0 + max(0.0, self._temp - 40.0) / 10.0)
        if self._collapsed:
            self._drift = lag(self._drift, self._collapse_drift, self._k_collapse)
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
        queue = clamp(self._noisy(36.0 * load, 3.0), 0.0, 40.0)
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
            self._laser = clamp(revert(r, self._laser, self._laser_mean, self._k_laser,
                                         self._n_laser), 8.0, 12.0)
            laser = self._laser
        self._inferences += events(r, rate, s)
        self._errors += events(r, 0.3 if self._collapsed else 1.0 / 3600.0, s)
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
            Reading(3, (), round(self._noisy(self._temp, TEMP_NOISE), 2)),
            Reading(4, (), round(self._drift, 4)),
            Reading("photon_optical_power_mw", (), round(laser, 3)),
            Reading("photon_inference_latency_seconds", (), round(latency, 7)),
            Reading("photon_queue_depth", (), float(round(queue))),
            Reading("photon_memory_usage_bytes", (), float(round(used * _PHOTON_MEMORY))),
            self._capacity,
        ]


PROFILE = _PhotonModel.declare("photon-mlir-bridge photonic accelerator", firmware="0.4.0",
                               model_name="resnet18-photonic", metrics=_PHOTON_METRICS)
