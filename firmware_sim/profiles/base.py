"""What every profile is made of: the readings a model produces, the baselines it is held to,
the faults it accepts, and the `Profile` record the simulator and the tests work from."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, Protocol

from device_protocol.frames import HistogramValue, Labels, MetricDef

KIB, MIB, GIB = 1024, 1024 * 1024, 1024 * 1024 * 1024


def labels(**pairs: str) -> Labels:
    return tuple(sorted(pairs.items()))


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
    (tests/logic/sim/test_profiles.py holds the three together)."""

    latency_s: float  # the latency statistic the seed reports; see LATENCY_BASELINES
    throughput: float = 0.0  # per second where an alert compares it (tokens, frames); else 0


@dataclass(frozen=True, slots=True)
class Board:
    """A platform where memory and power are all a model needs of it (audio-nets, tiny-llm)."""

    memory: int  # bytes
    power_mw: float  # at no load
    power_load_mw: float  # added at full load (speech activity, CPU), in proportion


class ModelFault(StrEnum):
    OVERHEAT = "overheat"
    MEMORY_LEAK = "memory-leak"
    ACCURACY_COLLAPSE = "accuracy-collapse"
    FLASH_FILL = "flash-fill"


ALL_FAULTS = frozenset(ModelFault)
COMMON_FAULTS = frozenset({ModelFault.OVERHEAT, ModelFault.MEMORY_LEAK,
                           ModelFault.ACCURACY_COLLAPSE})


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
        check_platform(self.name, self.platforms, platform)
        return (("model", self.model_name), ("platform", platform), ("profile", self.name))

    def natural_samples(self) -> int:
        """Samples in one reading of every metric (asked of a throwaway model)."""
        return len(self.new_model(random.Random(0), self.platforms[0]).read(1))


def check_platform(profile: str, platforms: Collection[str], platform: str) -> None:
    if platform not in platforms:
        raise ValueError(f"profile {profile!r} has no platform {platform!r}; "
                         f"known: {', '.join(platforms)}")
