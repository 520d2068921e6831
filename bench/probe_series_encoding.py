"""Timing probe for SeriesEncoder.frame_entries (not a test): prints microseconds per frame.

Run from the repo root: .venv/bin/python bench/probe_series_encoding.py
"""

from __future__ import annotations

import time

from device_protocol.frames import HistogramSample, Sample, Telemetry
from gateway.remote_write.series import SeriesEncoder

BASE_MS = 1_700_000_000_000
LABELS = (("model", "yolo-v8n"), ("site", "plant-7"), ("zone", "line-3"))


def gauge_frame(seq: int) -> Telemetry:
    ts = BASE_MS + seq * 1000
    samples = tuple(Sample(f"edge_metric_{i}", LABELS, float(seq + i), ts) for i in range(20))
    return Telemetry(boot=1, seq=seq, time_ms=ts, samples=samples, historical=False)


def histogram_frame(seq: int) -> Telemetry:
    ts = BASE_MS + seq * 1000
    buckets = ((0.005, 1.0), (0.01, 2.0), (0.05, 5.0), (0.1, 7.0), (0.5, 9.0), (float("inf"), 10.0))
    hist = HistogramSample("inference_seconds", LABELS, 10.0, 1.23, buckets, ts)
    return Telemetry(boot=1, seq=seq, time_ms=ts, samples=(hist,), historical=False)


def per_frame_us(make: type | object, frames: int = 20_000) -> tuple[float, int]:
    encoder = SeriesEncoder(external_labels=(("gateway", "gw-1"),))
    prepared = [make(seq) for seq in range(frames)]  # type: ignore[operator]
    encoder.frame_entries("dev-0001", prepared[0])  # warm the cache
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for frame in prepared:
            entries = encoder.frame_entries("dev-0001", frame)
        best = min(best, (time.perf_counter() - start) / frames * 1e6)
    return best, len(entries)


def main() -> None:
    us, n = per_frame_us(gauge_frame)
    print(f"20 gauges      : {us:6.2f} us/frame  ({n} entries, {us / n:.2f} us/entry)")
    us, n = per_frame_us(histogram_frame)
    print(f"1 histogram(6b): {us:6.2f} us/frame  ({n} entries, {us / n:.2f} us/entry)")


if __name__ == "__main__":
    main()
