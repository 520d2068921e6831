"""Device profiles: the five seed fleets of docs/seeds.md, what they declare and how values move.

docs/seeds.md is the contract (metric names, labels, types, normal ranges, faults); the alert
rules and dashboards are written against it, and tests/logic/sim/test_profiles.py checks this
package against its tables.

One module per seed profile (`liquid_edge`, `audio_nets`, `tiny_llm`, `edge_tpu`, `photon`), each
with its metrics, platforms, baselines, model and `PROFILE`; what they share is in `base` (the
readings, baselines, faults and the `Profile` record) and `dynamics` (the walks, the histogram
and `ModelBase`, with why the dynamics are shaped as they are).

Each profile sends a mix of aliased metrics (declared in the birth and sent by alias; counters
and histograms must be declared so the gateway knows their type and bounds) and named metrics
(undeclared gauges sent by name, as firmware does for ad-hoc diagnostics).
"""

from __future__ import annotations

from firmware_sim.profiles import audio_nets, edge_tpu, liquid_edge, photon, tiny_llm
from firmware_sim.profiles.base import Baseline, DeviceModel, ModelFault, Profile, Reading
from firmware_sim.profiles.liquid_edge import LIQUID_DURATION_BOUNDS

__all__ = ["LATENCY_BASELINES", "LIQUID_DURATION_BOUNDS", "PROFILES", "Baseline", "DeviceModel",
           "ModelFault", "Profile", "Reading", "UnknownProfileError", "get_profile",
           "parse_profiles"]

_MODULES = (liquid_edge, audio_nets, tiny_llm, edge_tpu, photon)  # the order of docs/seeds.md

PROFILES: dict[str, Profile] = {m.PROFILE.name: m.PROFILE for m in _MODULES}

# profile -> platform -> model (the `model` label of its series) -> Baseline: what the alert
# rules' baseline recording rules and the "Baselines" tables of docs/seeds.md carry. Which
# latency each profile reports is said beside its BASELINES.
LATENCY_BASELINES: dict[str, dict[str, dict[str, Baseline]]] = {
    m.PROFILE.name: m.BASELINES for m in _MODULES}


class UnknownProfileError(ValueError):
    """A profile name that is not in `PROFILES`."""


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
