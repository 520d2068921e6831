"""Read back what reached the receivers, per device, to count losses and doubles exactly."""

from __future__ import annotations

import time
from collections import Counter

import tests.support.factories as f
from devstack import Prometheus, VictoriaMetrics


def vm_samples(vm: VictoriaMetrics, metric: str) -> dict[str, list[tuple[int, float]]]:
    """Raw samples per device (VictoriaMetrics keeps duplicates, so doubles are visible)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in vm.export(f'{{__name__="{metric}"}}'):
        device = row["metric"]["device_id"]
        # A stale marker (a device gone offline) is exported as null: it is no sample.
        out.setdefault(device, []).extend(
            (ts, v) for ts, v in zip(row["timestamps"], row["values"], strict=True)
            if v is not None)
    return out


def prom_counts(prom: Prometheus, metric: str, window: str = "3h") -> dict[str, int]:
    rows = prom.query(f"count_over_time({metric}[{window}])")
    return {r["metric"]["device_id"]: int(float(r["value"][1])) for r in rows}


def prom_samples(prom: Prometheus, metric: str, device_id: str,
                 window: str = "3h") -> list[tuple[int, float]]:
    rows = prom.query(f'{metric}{{device_id="{device_id}"}}[{window}]')
    return [(int(float(t) * 1000), float(v)) for r in rows for t, v in r["values"]]


def expected_temperatures(devices: range, seqs: range) -> dict[str, set[float]]:
    return {f.device_id(i): {f.sample_value(i, s) for s in seqs} for i in devices}


def account(received: dict[str, list[tuple[int, float]]],
            expected: dict[str, set[float]]) -> tuple[int, int]:
    """(lost, doubled) sample counts of received against expected values per device."""
    lost = doubled = 0
    for device, values in expected.items():
        counts = Counter(v for _, v in received.get(device, []))
        lost += sum(1 for v in values if counts[v] == 0)
        doubled += sum(c - 1 for v, c in counts.items() if c > 1)
    return lost, doubled


def vm_account(vm: VictoriaMetrics, metric: str, expected: dict[str, set[float]],
               within_s: float = 20.0) -> tuple[int, int]:
    """(lost, doubled) once VictoriaMetrics shows everything, or as it stands after within_s.

    Right after a write and a force_flush, VictoriaMetrics can still answer with part of the
    data (seen: 727,700 of 1,200,000 samples, complete a second later); polling avoids reading
    that as a loss."""
    deadline = time.monotonic() + within_s
    while True:
        lost, doubled = account(vm_samples(vm, metric), expected)
        if lost == 0 or time.monotonic() >= deadline:
            return lost, doubled
        time.sleep(0.1)
