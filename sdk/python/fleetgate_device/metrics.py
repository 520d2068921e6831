"""Gauges, counters and histograms a Device reports every interval, with labelled children.

Labels are keyword arguments (`temp.set(41.5, sensor="cpu")`); each distinct set is a child,
a series of its own. Updates may come from any thread: one lock (the Device's) guards them.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

from fleetgate_device.samples import (
    HistogramValue,
    Kind,
    Sample,
    check_bounds,
    check_labels,
    check_metric_name,
)

LabelKey = tuple[tuple[str, str], ...]


class Metric:
    kind: Kind = "gauge"

    def __init__(self, name: str, lock: threading.Lock, bounds: tuple[float, ...] = ()) -> None:
        self.name = check_metric_name(name)
        self.bounds = bounds
        self._lock = lock
        self._children: dict[LabelKey, Any] = {}
        self._labels: dict[LabelKey, dict[str, str]] = {}

    def _key(self, labels: dict[str, str]) -> LabelKey:
        """Called with the lock held."""
        key = tuple(sorted(labels.items()))
        if key not in self._labels:
            self._labels[key] = check_labels(labels, f"metric {self.name}")
        return key

    def samples(self) -> list[Sample]:
        with self._lock:
            return [Sample(self.name, self._value(state), self._labels[key], self.kind,
                           self.bounds) for key, state in self._children.items()]

    def _value(self, state: Any) -> float | HistogramValue:
        return float(state)


class Gauge(Metric):
    kind: Kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        value = float(value)
        with self._lock:
            self._children[self._key(labels)] = value

    def inc(self, by: float = 1.0, **labels: str) -> None:
        with self._lock:
            key = self._key(labels)
            self._children[key] = self._children.get(key, 0.0) + float(by)

    def dec(self, by: float = 1.0, **labels: str) -> None:
        self.inc(-float(by), **labels)


class Counter(Metric):
    kind: Kind = "counter"

    def inc(self, by: float = 1.0, **labels: str) -> None:
        if by < 0:
            raise ValueError(f"counter {self.name} only goes up: inc({by})")
        with self._lock:
            key = self._key(labels)
            self._children[key] = self._children.get(key, 0.0) + float(by)


class Histogram(Metric):
    kind: Kind = "histogram"

    def __init__(self, name: str, lock: threading.Lock, bounds: tuple[float, ...]) -> None:
        super().__init__(name, lock, check_bounds(name, bounds))

    def observe(self, value: float, **labels: str) -> None:
        value = float(value)
        with self._lock:
            key = self._key(labels)
            state = self._children.get(key)
            if state is None:  # [count, sum, per-bucket (not cumulative) counts]
                state = self._children[key] = [0, 0.0, [0] * len(self.bounds)]
            state[0] += 1
            state[1] += value
            i = bisect.bisect_left(self.bounds, value)  # le: value <= bound
            if i < len(self.bounds):
                state[2][i] += 1

    def _value(self, state: Any) -> HistogramValue:
        running, cumulative = 0, []
        for n in state[2]:
            running += n
            cumulative.append(float(running))
        return HistogramValue(float(state[0]), float(state[1]), tuple(cumulative))
