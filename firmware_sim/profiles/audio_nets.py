"""Seed profile 2, audio-nets: keyword spotting (docs/seeds.md, section 2)."""

from __future__ import annotations

import random

from device_protocol.frames import MetricDef, MetricType
from firmware_sim.profiles import base, dynamics
from firmware_sim.profiles.base import Baseline, Reading
from firmware_sim.profiles.dynamics import TEMP_NOISE, ModelBase, clamp, events, lag, ou, revert

# Baselines (platform -> model -> Baseline): the latency is audio_inference_latency_ms (one
# 250 ms window), here in seconds.
BASELINES: dict[str, dict[str, Baseline]] = {
    "stm32f4": {"kws-lnn-12": Baseline(0.0105)},
    "nrf52840": {"kws-lnn-12": Baseline(0.0085)},
}

_AUDIO_METRICS = (
    MetricDef(0, "audio_inference_total", MetricType.COUNTER),
    MetricDef(1, "audio_keywords_detected_total", MetricType.COUNTER),
    MetricDef(2, "audio_inference_latency_ms", MetricType.GAUGE),
    MetricDef(3, "audio_power_milliwatts", MetricType.GAUGE),
    MetricDef(4, "device_battery_percent", MetricType.GAUGE),
    MetricDef(5, "audio_model_accuracy", MetricType.GAUGE),
    MetricDef(6, "device_temperature_celsius", MetricType.GAUGE),
)

_AUDIO_PLATFORMS = {
    "stm32f4": base.Board(192 * base.KIB, 0.55, 0.45),
    "nrf52840": base.Board(256 * base.KIB, 0.44, 0.36),
}

_WINDOW_MS = 250  # one inference per 250 ms audio window
# A 40 mAh 3.7 V cell: lasts about a week at under a milliwatt, so a fleet shows drains and swaps.
_BATTERY_MWH = 40.0 * 3.7


class _AudioNetsModel(ModelBase):
    profile = "audio-nets"
    # flash-fill: the device's logs fill its flash. Overheat: no throttling, these parts have no
    # thermal management (a hot one just runs hot).
    platforms = _AUDIO_PLATFORMS
    supported = base.ALL_FAULTS
    _typical_load = 0.3  # speech activity: the devices' means are 0.15-0.45
    _temp_tau_s = 120.0

    def __init__(self, rng: random.Random, platform: str) -> None:
        super().__init__(rng, platform)
        self._p = _AUDIO_PLATFORMS[platform]
        (baseline,) = BASELINES[platform].values()
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
        self._k_acc, self._n_acc = ou(s, 1200.0, 0.006)
        self._k_drift, self._n_drift = ou(s, 900.0, 0.04)
        self._k_flash, self._n_flash = ou(s, 3600.0, 3.0)

    def read(self, elapsed_ms: int) -> list[Reading]:
        activity = self._step(elapsed_ms)
        r, p, s = self._r, self._p, self._s
        self._uptime_s += s
        self._audio_ms += max(0, elapsed_ms)
        windows, self._audio_ms = divmod(self._audio_ms, _WINDOW_MS)
        self._inferences += windows
        if self._collapsed:
            self._acc = lag(self._acc, self._collapse_to, self._k_collapse)
            self._drift = lag(self._drift, self._collapse_drift, self._k_collapse)
            accuracy = self._noisy(self._acc, 0.004)
            drift = self._noisy(self._drift, 0.01)
            self._fp = fp = lag(self._fp, self._collapse_fp, self._k_collapse)
            confidence = self._noisy(self._collapse_conf, 0.01)
        else:
            self._acc = clamp(revert(r, self._acc, self._acc_mean, self._k_acc, self._n_acc),
                               0.9, 0.96)
            self._drift = clamp(revert(r, self._drift, self._drift_mean, self._k_drift,
                                         self._n_drift), 0.0, 0.3)
            accuracy, drift = self._acc, self._drift
            self._fp = fp = clamp(
                self._noisy(self._fp_base + 0.01 * activity + 0.02 * drift, 0.002), 0.005, 0.03)
            confidence = clamp(self._noisy(0.93 - 0.3 * drift, 0.01), 0.8, 0.95)
        # Detections: the speech that holds keywords, plus false alarms.
        self._detections += events(r, 0.015 + 0.06 * activity + 0.5 * fp, s)
        used = self._used(self._noisy(self._mem_share + 0.08 * activity, 0.003))
        latency = self._latency_ms * self._slowdown(activity, used)
        power = self._noisy(p.power_mw + p.power_load_mw * activity, 0.015)
        self._battery_mwh -= power * s / 3600.0
        if self._battery_mwh < 0.05 * _BATTERY_MWH:
            self._battery_mwh = _BATTERY_MWH  # swapped by a technician
        self._temp = self._heat(self._temp, self._ambient + 1.5 + 5.0 * activity)
        if self._filling:
            self._flash = min(98.0, self._flash + dynamics.FLASH_FILL_PER_S * s)
        else:
            self._flash = clamp(revert(r, self._flash, 57.0, self._k_flash, self._n_flash),
                                 40.0, 80.0)
        used *= p.memory
        return [
            Reading(0, (), self._inferences),
            Reading(1, (), self._detections),
            Reading(2, (), round(latency, 2)),
            Reading(3, (), round(power, 4)),
            Reading(4, (), round(100.0 * self._battery_mwh / _BATTERY_MWH, 4)),
            Reading(5, (), round(accuracy, 4)),
            Reading(6, (), round(self._noisy(self._temp, TEMP_NOISE), 2)),
            # 16 kHz audio kept up with, plus the DMA backlog drained at each window.
            Reading("audio_throughput_samples_per_second", (), round(16000.0 + 64.0 * r(), 1)),
            Reading("audio_memory_usage_bytes", (), float(round(used))),
            Reading("audio_free_ram_kilobytes", (), round((p.memory - used) / 1024.0, 2)),
            Reading("audio_cpu_usage_percent", (),
                    round(clamp(self._noisy(22.0 + 45.0 * activity, 1.5), 20.0, 70.0), 2)),
            Reading("audio_energy_per_inference_microjoules", (),
                    round(power * 1000.0 * _WINDOW_MS / 1000.0, 2)),
            Reading("audio_battery_hours_remaining", (), round(self._battery_mwh / power, 2)),
            Reading("audio_false_positive_rate", (), round(fp, 4)),
            Reading("audio_confidence", (), round(confidence, 4)),
            Reading("audio_drift_score", (), round(clamp(drift, 0.0, 1.0), 4)),
            Reading("device_flash_usage_percent", (), round(self._flash, 2)),
            Reading("device_uptime_seconds", (), round(self._uptime_s, 3)),
        ]


PROFILE = _AudioNetsModel.declare("liquid-audio-nets: always-on keyword spotting on battery",
                                  firmware="1.4.2", model_name="kws-lnn-12",
                                  metrics=_AUDIO_METRICS)
