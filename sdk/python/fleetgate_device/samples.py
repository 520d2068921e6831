"""What a device reports: `Sample` and `HistogramValue`, and the checks the protocol puts on
names and labels (docs/protocol.md "Names and labels"), made on the device so a mistake is a
ValueError where it is written, not a quarantined frame at the gateway."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["gauge", "counter", "histogram"]
KINDS: tuple[Kind, ...] = ("gauge", "counter", "histogram")

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_NAME = 200
MAX_LABEL_VALUE = 256
MAX_LABELS = 16
MAX_BOUNDS = 64


@dataclass(frozen=True)
class HistogramValue:
    """A histogram's state: `cumulative` holds one cumulative count per upper bound."""

    count: float
    sum: float
    cumulative: tuple[float, ...]


@dataclass(frozen=True)
class Sample:
    name: str
    value: float | HistogramValue
    labels: Mapping[str, str] = field(default_factory=dict)
    kind: Kind = "gauge"
    bounds: tuple[float, ...] = ()  # histograms: the upper bounds without +Inf


def check_device_id(device_id: str) -> str:
    if not _DEVICE_ID.fullmatch(device_id):
        raise ValueError(f"invalid device id {device_id!r}: "
                         "1-64 of [A-Za-z0-9_.-], starting with a letter or digit")
    return device_id


def check_metric_name(name: str) -> str:
    if len(name) > MAX_NAME or not _METRIC_NAME.fullmatch(name):
        raise ValueError(f"invalid metric name {name!r}: [a-zA-Z_:][a-zA-Z0-9_:]*, <= 200 chars")
    if name.startswith("fleet_device"):
        raise ValueError(f"metric name {name!r} is reserved (fleet_device*: the gateway's own)")
    return name


def check_labels(labels: Mapping[str, str], where: str) -> dict[str, str]:
    """The labels as a plain dict, or ValueError naming the first bad one."""
    if len(labels) > MAX_LABELS:
        raise ValueError(f"{where}: {len(labels)} labels, at most {MAX_LABELS}")
    out: dict[str, str] = {}
    for name, value in labels.items():
        if name == "device_id":
            raise ValueError(f"{where}: the label device_id is reserved (the gateway sets it "
                             "from the topic); pass the device id as Device(device_id, ...)")
        if name == "le" or name.startswith("__"):
            raise ValueError(f"{where}: the label name {name!r} is reserved")
        if len(name) > MAX_NAME or not _LABEL_NAME.fullmatch(name):
            raise ValueError(f"{where}: invalid label name {name!r}")
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE:
            raise ValueError(f"{where}: label {name} needs a str value of <= 256 chars")
        out[name] = value
    return out


def check_bounds(name: str, bounds: tuple[float, ...]) -> tuple[float, ...]:
    out = tuple(float(b) for b in bounds)
    if len(out) > MAX_BOUNDS:
        raise ValueError(f"histogram {name}: {len(out)} bounds, at most {MAX_BOUNDS}")
    if not all(math.isfinite(b) for b in out):
        raise ValueError(f"histogram {name}: bounds must be finite (+Inf is implicit)")
    if any(a >= b for a, b in itertools.pairwise(out)):
        raise ValueError(f"histogram {name}: bounds must be strictly increasing")
    return out


def wire_value(sample: Sample) -> float | list[object]:
    """The sample's value as the frame carries it: float64, or [count, sum, [cumulative]]."""
    value = sample.value
    if isinstance(value, HistogramValue):
        if sample.kind != "histogram":
            raise ValueError(f"{sample.name}: a HistogramValue needs kind='histogram'")
        if len(value.cumulative) != len(sample.bounds):
            raise ValueError(f"histogram {sample.name}: {len(value.cumulative)} cumulative "
                             f"counts for {len(sample.bounds)} bounds")
        numbers = [float(value.count), float(value.sum), *map(float, value.cumulative)]
        if not all(math.isfinite(x) for x in numbers):
            raise ValueError(f"histogram {sample.name}: values must be finite")
        return [numbers[0], numbers[1], numbers[2:]]
    if sample.kind == "histogram":
        raise ValueError(f"histogram {sample.name}: the value must be a HistogramValue")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{sample.name}: value {value!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{sample.name}: value {number} is not finite (NaN/Inf are refused)")
    return number
