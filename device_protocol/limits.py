"""Bounds on what a device may send; every decoder takes them explicitly."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    # 64 KiB holds a 1000-sample frame of aliased floats (~12 B each) with room to spare, and
    # caps what one hostile message can make the decoder allocate.
    max_payload_bytes: int = 65536
    # Per telemetry frame: devices batch by time, not by count; 1000 keeps one frame's
    # remote-write slice small.
    max_samples: int = 1000
    # Per sample and for birth labels: series identity needs a few labels, not dozens
    # (each label multiplies the receiver's index size).
    max_labels: int = 16
    # Per birth: an edge device exporting more than 1000 metrics is almost surely a bug.
    max_metrics: int = 1000
    # Histogram bounds per metric; Prometheus client libraries rarely go past ~30.
    max_buckets: int = 64
    # Metric and label names.
    max_name_len: int = 200
    # Label values; longer ones are usually ids or free text that blow up cardinality.
    max_label_value_len: int = 256
    # Birth strings hw (platform) and fw (firmware).
    max_string_len: int = 256
    # A device clock this far ahead is wrong; accepting it would push Prometheus' head forward
    # and make everyone's current samples "out of bounds".
    max_future_skew_ms: int = 300_000


DEFAULT_LIMITS = Limits()
