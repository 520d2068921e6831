"""RegistryBridge: a prometheus_client registry published through fleetgate, unchanged.

A seed project already instrumented with `prometheus_client` keeps its instrumentation: the
bridge reads `registry.collect()` every interval and hands the Device one Sample per series, so
the series the gateway writes are the series a Prometheus scrape of the same registry yields
(docs/protocol.md "Series produced"; checked by tests/e2e/test_bridge_equivalence.py):

- gauge, unknown: one gauge per child, under the sample's name;
- counter: the `name_total` sample as a counter (the gateway does not append `_total`);
- histogram: one histogram Sample named like the family; the gateway writes `name_bucket`
  (bounds from the `le` values without `+Inf`), `name_sum` and `name_count` from it;
- summary: `name_count` and `name_sum` as counters, quantiles (custom collectors) as gauges;
- info: `name_info` = 1 with its labels; stateset (`Enum`): `name{name="<state>"}` 1/0;
- `*_created` samples are dropped: they are a scrape-side timestamp, not device data.

Left out, each logged once: non-finite values (the protocol refuses NaN and ±Inf, and one would
refuse the whole frame), gauge histograms (their buckets are gauges with an `le` label, which
the protocol reserves for its own histograms) and native histograms (no bucket list).

The `device_id` label the seeds put on their metrics is reserved by the protocol (the gateway
sets it from the topic). A child whose `device_id` equals the bridge's is that device: the
label is removed, and the gateway puts the same value back. A child naming another device is an
error (ValueError naming the metric and both ids): `start()` collects once before it connects
and raises it there, so a wrong id stops the program at start-up rather than publishing a
partial registry. A child with a wrong id that appears later is left out of the frames and
logged once: an error there would cost every series its frame, interval after interval. The
same rule holds for a series the Device would refuse (a reserved or invalid name or label, a
name that changes type or buckets) and for two children that are one series once device_id is
gone. A collector that raises makes that collect a ValueError: the Device skips that frame.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from fleetgate_device.samples import (
    HistogramValue,
    Kind,
    Sample,
    check_bounds,
    check_labels,
    check_metric_name,
)

log = logging.getLogger(__name__)

DEVICE_ID_LABEL = "device_id"
# Sample names prometheus_client yields beside the data: the child's creation time, exposed as
# a gauge a scrape stores but no dashboard of the seeds reads.
_CREATED_SUFFIX = "_created"
_VERDICTS_MAX = 4096


class Collectable(Protocol):
    """What the bridge needs of a registry: prometheus_client's CollectorRegistry or any
    collector with the same `collect()`."""

    def collect(self) -> Iterable[Any]: ...


class DeviceIdMismatch(ValueError):
    """A series carries a device_id label that is not the bridge's device id."""

    def __init__(self, metric: str, labels: Mapping[str, str], bridge_id: str) -> None:
        self.metric = metric
        self.series_id = labels[DEVICE_ID_LABEL]
        self.bridge_id = bridge_id
        super().__init__(
            f"metric {metric!r} has device_id={self.series_id!r} but this bridge publishes as "
            f"device {bridge_id!r}: the gateway takes the device id from the MQTT topic, so a "
            f"series of another device cannot be sent through this one (give the bridge "
            f"device_id={self.series_id!r}, or drop the label from that metric)")


@dataclass
class Translator:
    """registry.collect() -> Samples for one device; pure (no I/O), reusable every interval.

    strict: a device_id mismatch or a duplicate series raises (the first collect); otherwise
    the series is left out and logged once.
    """

    device_id: str
    strict: bool = True
    _warned: set[str] = field(default_factory=set)
    _le: dict[str, float] = field(default_factory=dict)  # `le` strings parsed once
    _relabelled: bool = False  # the family being read had a label taken off
    _verdicts: dict[tuple[Any, ...], bool] = field(default_factory=dict)  # see _sendable
    _types: dict[str, tuple[Kind, tuple[float, ...]]] = field(default_factory=dict)
    # The Device's thread and an application's publish_now() may collect at the same time.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def samples(self, registry: Collectable) -> list[Sample]:
        out: list[Sample] = []
        with self._lock:
            for family in registry.collect():
                self._relabelled = False
                got = [s for s in self._family(family) if self._sendable(s)]
                # two children become one series only if a label was taken off one of them
                out.extend(self._unique(got) if self._relabelled and len(got) > 1 else got)
        return out

    def _sendable(self, sample: Sample) -> bool:
        """What the Device would refuse, checked here per series (once, then cached), so one
        bad series is left out instead of costing every frame: a name or label the protocol
        does not allow (`le` on a gauge, a name over 200 characters, more than 16 labels, a
        `fleet_device*` name), over 64 bounds, or a name seen before with another type or
        other bounds."""
        key = (sample.name, sample.kind, sample.bounds, tuple(sample.labels.items()))
        verdict = self._verdicts.get(key)
        if verdict is not None:
            return verdict
        try:
            check_metric_name(sample.name)
            check_labels(sample.labels, f"metric {sample.name}")
            if sample.kind == "histogram":
                check_bounds(sample.name, sample.bounds)
            first = self._types.setdefault(sample.name, (sample.kind, sample.bounds))
            if first != (sample.kind, sample.bounds):
                raise ValueError(f"metric {sample.name} was a {first[0]}{list(first[1]) or ''}"
                                 f" and is now a {sample.kind}{list(sample.bounds) or ''}: "
                                 "one name keeps one type and one set of buckets")
            verdict = True
        except ValueError as e:
            self._refuse(e, sample.name)
            verdict = False
        if len(self._verdicts) >= _VERDICTS_MAX:
            self._verdicts.clear()  # label churn: check again rather than grow without end
        self._verdicts[key] = verdict
        return verdict

    def _unique(self, samples: list[Sample]) -> list[Sample]:
        seen: set[tuple[str, frozenset[tuple[str, str]]]] = set()
        out = []
        for sample in samples:
            key = (sample.name, frozenset(sample.labels.items()))
            if key in seen:
                self._refuse(ValueError(
                    f"metric {sample.name!r} has two series with labels "
                    f"{dict(sample.labels)!r} once device_id is removed: a scrape would "
                    f"refuse them too; label them apart"), sample.name)
                continue
            seen.add(key)
            out.append(sample)
        return out

    def _family(self, family: Any) -> list[Sample]:
        kind = family.type
        if kind == "histogram":
            return self._histograms(family)
        if kind == "gaugehistogram":
            self._warn_once(family.name, f"gauge histogram {family.name!r} is not bridged: the "
                            "protocol has none (and reserves `le` for its own histograms)")
            return []
        out = []
        for s in family.samples:
            if s.name.endswith(_CREATED_SUFFIX) and kind in ("counter", "summary"):
                continue
            if getattr(s, "native_histogram", None) is not None:
                self._warn_once(s.name, f"native histogram {s.name!r} is not bridged: the "
                                "protocol has bucket histograms only")
                continue
            labels = self._labels(s.name, s.labels)
            if labels is None or not self._finite(s.name, s.value):
                continue
            out.append(Sample(s.name, float(s.value), labels, _scalar_kind(family, s.name)))
        return out

    def _histograms(self, family: Any) -> list[Sample]:
        """One histogram Sample per child: the `le` buckets, `_count` and `_sum` of a label set.
        A child's samples carry its labels in one order (prometheus_client builds them so, `le`
        last on a bucket), so the unsorted items key it; no order of the samples is assumed."""
        children: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        le_cache = self._le
        for s in family.samples:
            name = s.name
            if name.endswith(_CREATED_SUFFIX):
                continue
            if getattr(s, "native_histogram", None) is not None:
                self._warn_once(family.name, f"native histogram {family.name!r} is not bridged: "
                                "the protocol has bucket histograms only")
                return []
            labels = s.labels
            key = tuple(labels.items())
            is_bucket = name.endswith("_bucket")
            if is_bucket:
                key = key[:-1] if key[-1][0] == "le" else tuple(
                    item for item in key if item[0] != "le")
            child = children.get(key)
            if child is None:
                child = children[key] = {"labels": dict(key), "buckets": {}}
            if is_bucket:
                le = labels["le"]
                bound = le_cache.get(le)
                if bound is None:
                    bound = le_cache[le] = float(le)
                child["buckets"][bound] = float(s.value)
            elif name.endswith("_count"):
                child["count"] = float(s.value)
            elif name.endswith("_sum"):
                child["sum"] = float(s.value)
        out = []
        for child in children.values():
            sent = self._labels(family.name, child["labels"])
            if sent is None:
                continue
            buckets: dict[float, float] = child["buckets"]
            count = child.get("count", buckets.get(math.inf, 0.0))
            total = child.get("sum", 0.0)
            bounds = tuple(sorted(b for b in buckets if b != math.inf))
            cumulative = tuple(buckets[b] for b in bounds)
            if not all(map(math.isfinite, (count, total, *cumulative))):
                self._warn_once(family.name, f"histogram {family.name!r} has a non-finite "
                                "count or sum (an observation of ±Inf or NaN): left out")
                continue
            out.append(Sample(family.name, HistogramValue(count, total, cumulative), sent,
                              "histogram", bounds))
        return out

    def _labels(self, metric: str, labels: Mapping[str, str]) -> dict[str, str] | None:
        """The labels to send: device_id checked and removed, empty values dropped (a scrape
        reads `a=""` as no label `a`, so an empty device_id is no device_id). None: the series
        is refused (non-strict)."""
        if not labels:
            return {}
        if (labels.get(DEVICE_ID_LABEL) or self.device_id) != self.device_id:
            self._refuse(DeviceIdMismatch(metric, labels, self.device_id), metric)
            return None
        sent = {k: v for k, v in labels.items() if k != DEVICE_ID_LABEL and v != ""}
        if len(sent) != len(labels):
            self._relabelled = True
        return sent

    def _finite(self, metric: str, value: float) -> bool:
        if math.isfinite(value):
            return True
        self._warn_once(metric, f"metric {metric!r} is {value}: left out while it is not "
                        "finite (the protocol refuses NaN and ±Inf)")
        return False

    def _refuse(self, error: ValueError, metric: str) -> None:
        if self.strict:
            raise error
        self._warn_once(metric, f"{error}; the series is left out", level=logging.ERROR)

    def _warn_once(self, metric: str, message: str, level: int = logging.WARNING) -> None:
        if metric not in self._warned:
            self._warned.add(metric)
            log.log(level, "%s", message)


def _scalar_kind(family: Any, sample_name: str) -> Kind:
    """counter for a counter's `_total` and a summary's `_count`/`_sum`; gauge otherwise."""
    if family.type == "counter":
        return "counter"
    if family.type == "summary" and sample_name in (f"{family.name}_count",
                                                    f"{family.name}_sum"):
        return "counter"
    return "gauge"


class RegistryBridge:
    """Publishes `registry` as device `device_id` every `interval_s` through a Device.

    device_kwargs go to Device unchanged (labels, topic_prefix, TLS and credential files,
    ring_size, ring_path, ...); `collect` is the bridge's own.
    """

    def __init__(self, registry: Collectable, *, device_id: str, mqtt_url: str, hw: str,
                 fw: str, interval_s: float = 10.0, **device_kwargs: Any) -> None:
        if "collect" in device_kwargs:
            raise TypeError("RegistryBridge: collect is the bridge's own; register another "
                            "collector on the registry instead")
        from fleetgate_device.device import Device  # the translation above needs no MQTT

        self.registry = registry
        self.translator = Translator(device_id)
        self.device = Device(device_id, mqtt_url, hw=hw, fw=fw, interval_s=interval_s,
                             collect=self.collect, **device_kwargs)

    def collect(self) -> list[Sample]:
        """The registry's series now, as Samples (the Device calls this every interval).

        A collector of the registry that raises makes this a ValueError: the Device then
        logs it and skips that frame (as a failed scrape stores nothing) and its thread goes
        on; any other exception would end the thread and every later frame."""
        try:
            return self.translator.samples(self.registry)
        except ValueError:
            raise
        except Exception as e:
            raise ValueError(f"registry.collect() failed: {e!r}") from e

    def start(self) -> None:
        """Check the registry once (ValueError for a series of another device_id or two series
        that are one once device_id is removed), then connect and publish in the background."""
        self.translator.strict = True
        self.collect()
        self.translator.strict = False
        self.device.start()

    def publish_now(self) -> None:
        self.device.publish_now()

    def stop(self) -> None:
        self.device.stop()
