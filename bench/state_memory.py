"""The gateway's per-device state in process: bytes per device and per series, and plan CPU.

The real Planner, FrameCompiler, SeriesBudget, BirthRegistry, dedup ledger and FleetState (no
broker, no SQLite: a stub hands out frame ids) are fed the births and `frames` telemetry frames
of N devices of 20 gauges, 500 messages a plan, each plan applied as Pipeline._apply does for
these parts. With --mem, tracemalloc runs throughout and the heap still held afterwards (after a
full collection) is divided by N and listed by allocating file. Issue 15 used it to find where
a device's bytes went (8.1 KB a device before births shared their declarations and the fleet
kept frames as bytes, 3.4 KB after, at 20,000 devices). CPU figures under --mem are inflated.

    .venv/bin/python bench/state_memory.py [--devices 20000] [--frames 3] [--mem]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from device_protocol import (
    DEFAULT_LIMITS,
    Birth,
    MetricDef,
    MetricType,
    RawSample,
    RawTelemetry,
    birth_topic,
    encode_birth,
    encode_telemetry,
    telemetry_topic,
)
from gateway.fleet.state import FleetState
from gateway.ingest.inbox import InboundMessage
from gateway.pipeline.dedup import Ledger
from gateway.pipeline.frame_compiler import FrameCompiler
from gateway.pipeline.plan import BatchPlan, Planner
from gateway.pipeline.series_budget import SeriesBudget
from gateway.pipeline.state import PipelineState
from gateway.remote_write.series import SeriesEncoder

METRICS = tuple(MetricDef(i, f"bench_m{i:02d}", MetricType.GAUGE) for i in range(20))


class FrameIds:
    """The one thing the planner asks of the buffer."""

    last_reserved = 0

    def reserve_id(self) -> int:
        self.last_reserved += 1
        return self.last_reserved


def message(device: int, frame: int, t0_ms: int) -> InboundMessage:
    """frame -1: the device's birth (each decoded anew, as from the wire)."""
    device_id = f"bench-{device:06d}"
    if frame < 0:
        birth = Birth(1000 + device, t0_ms, "esp32", "1.0", (), 10_000, METRICS)
        return InboundMessage(birth_topic("fleet", device_id), encode_birth(birth), 0, 1, 0,
                              t0_ms + 30_000)
    raw = RawTelemetry(1000 + device, frame, t0_ms + frame * 1000, tuple(
        RawSample(i, float(frame + i), 0, ()) for i in range(20)), False)
    return InboundMessage(telemetry_topic("fleet", device_id), encode_telemetry(raw), 0, 1, 0,
                          t0_ms + 30_000)


def apply(plan: BatchPlan, state: PipelineState, fleet: FleetState) -> None:
    """Pipeline._apply's part for these structures."""
    assert plan.overlay is not None
    state.ledger.apply(plan.overlay)
    for device_id, birth, ahead_ms, received_ms in plan.births:
        state.births.put(device_id, birth, ahead_ms, received_ms)
    for kind, device_id, item, ms in plan.fleet:
        if kind == "telemetry":
            rows, payload = item  # type: ignore[misc]
            fleet.observe_telemetry(device_id, rows, ms, payload)
        elif kind == "birth":
            fleet.observe_birth(device_id, item, ms)  # type: ignore[arg-type]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20_000)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--mem", action="store_true", help="tracemalloc: bytes per device")
    args = parser.parse_args()
    if args.mem:
        tracemalloc.start(1)
    t0_ms = int(time.time() * 1000) - 60_000
    state = PipelineState(Ledger(64))
    planner = Planner(state=state, buffer=FrameIds(), limits=DEFAULT_LIMITS,  # type: ignore[arg-type]
                      topic_prefix="fleet",
                      compiler=FrameCompiler(SeriesEncoder(), budget=SeriesBudget(1000)))
    fleet = FleetState(started_ms=t0_ms)
    cpu: dict[int, float] = {}
    for frame in range(-1, args.frames):
        for start in range(0, args.devices, 500):
            batch = [message(d, frame, t0_ms)
                     for d in range(start, min(args.devices, start + 500))]
            began = time.process_time()
            apply(planner.plan(batch, int(time.time() * 1000)), state, fleet)
            cpu[frame] = cpu.get(frame, 0.0) + time.process_time() - began
    n = args.devices
    later = sum(cpu[f] for f in range(1, args.frames)) / max(1, (args.frames - 1) * n)
    print(f"{n:,} devices: plan + apply CPU per message: birth {cpu[-1] / n * 1e6:.1f} µs, "
          f"first frame {cpu[0] / n * 1e6:.1f} µs, later frames {later * 1e6:.1f} µs")
    if args.mem:
        del batch
        gc.collect()
        stats = tracemalloc.take_snapshot().statistics("filename")
        total = sum(s.size for s in stats)
        print(f"heap held {total / 1e6:.1f} MB = {total / n:.0f} B a device, "
              f"{total / n / len(METRICS):.0f} B a series")
        root = str(Path(__file__).resolve().parent.parent)
        for stat in stats[:12]:
            print(f"  {stat.size / n:8.0f} B a device  "
                  f"{stat.traceback[0].filename.replace(root, '.')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
