"""The fleet-wide jobs at fleet scale (issue 15), before and after, in one run.

- checkpoint: the rows of every device (each sent a frame since the last checkpoint, 20 gauges
  each), built as before (JSON of every series by name: `legacy_row` below, the row() of
  before kept here) and as now (DeviceRecord.row(): msgpack of the samples by alias); then
  written into a SQLite file in the checkpoint's chunks. CPU seconds (process time).
- fleet metrics: the entries of a tick and their CPU, every device every tick (before:
  fleet_metric_entries) against the incremental FleetMetricsJob, with every device observed
  since the last tick (a 10 s cadence) and with 1% of them (a quiet fleet); averaged over one
  keep-alive period of 60 s ticks.
- going dark: --dark devices (20 gauges, one frame each) time out in one sweep while one device
  keeps sending, through a real Pipeline on a SQLite file: LifecycleJob as before (the whole
  sweep at once, one transaction per silent boot: close_boot) against now (slices, close_boots).
  The loop's worst stall (a 5 ms ticker's lateness) and the process CPU spent during it, the
  most CPU spent while the ticker waited, the live device's worst commit and how many of its
  frames committed meanwhile, the CPU and wall time of the whole.

Variants alternate which runs first from one repeat to the next; medians are printed, with the
ratios now / before. Figures on this shared 2-core machine are noisy: read the ratios.

    .venv/bin/python bench/fleet_jobs.py                       # 100,000 devices, 5,000 dark
    .venv/bin/python bench/fleet_jobs.py --devices 10000 --dark 1000 --repeat 1
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import results_file

from device_protocol import (
    Birth,
    HistogramValue,
    Limits,
    MetricDef,
    MetricType,
    RawSample,
    RawTelemetry,
    decode_telemetry_rows,
    encode_birth,
    encode_telemetry,
)
from gateway.app import tune_gc
from gateway.buffer import store
from gateway.buffer.buffer import Buffer
from gateway.buffer.db import Database, apply_migrations
from gateway.buffer.entry_cache import EntryCache
from gateway.fleet.events import EventHub
from gateway.fleet.records import DeviceRecord
from gateway.fleet.series import fleet_metric_entries
from gateway.fleet.state import FleetState
from gateway.ingest.inbox import InboundMessage
from gateway.jobs import lifecycle as lifecycle_module
from gateway.jobs.checkpoint import (
    CHECKPOINT_CHUNK,
    FLEET_CHECKPOINT_INTERVAL_S,
    FLEET_VALUES_CHECKPOINT_INTERVAL_S,
)
from gateway.jobs.fleet_metrics import FLEET_METRICS_KEEPALIVE_S, FleetMetricsJob
from gateway.jobs.lifecycle import LifecycleJob
from gateway.metrics import GatewayMetrics
from gateway.pipeline import stage
from gateway.pipeline.frame_compiler import FrameCompiler
from gateway.pipeline.readback import stored_frame_decoder
from gateway.pipeline.stage import Pipeline
from gateway.pipeline.state import restore_state
from gateway.remote_write.series import SeriesEncoder
from gateway.settings import StoreConfig

SERIES = 20
METRICS = tuple(MetricDef(i, f"sensor_{i}_value", MetricType.GAUGE) for i in range(SERIES))
INTERVAL_MS = 10_000
TICK_MS = 60_000
T0 = 1_790_000_000_000


def device_id(i: int) -> str:
    return f"dev-{i:06d}"


def birth(i: int, time_ms: int) -> Birth:
    return Birth(i + 1, time_ms, "esp32-s3", "2.1.0", (("site", "lab"),), INTERVAL_MS, METRICS)


def frame_bytes(i: int, seq: int, time_ms: int) -> bytes:
    samples = tuple(RawSample(m, 20.0 + m + seq * 0.01 + i * 1e-6, 0, ()) for m in range(SERIES))
    return encode_telemetry(RawTelemetry(i + 1, seq, time_ms, samples, False))


# ---------------------------------------------------------------------- checkpoint
def legacy_row(record: DeviceRecord) -> tuple[Any, ...]:
    """DeviceRecord.row() before issue 15: every series named and JSON-encoded."""
    def json_float(value: float) -> float | str:
        return value if math.isfinite(value) else str(value)

    series = [[name, [list(p) for p in labels],
               [json_float(v.count), json_float(v.sum)] if isinstance(v, HistogramValue)
               else json_float(float(v)), ts]
              for (name, labels), (v, ts) in record.series().items()]
    stats = {"frames": record.frames, "quarantined": record.quarantined,
             "duplicates": {str(b): n for b, n in record.duplicates.items()},
             "boots": record.boots}
    return (record.device_id, record.platform, record.firmware, record.boot,
            record.interval_ms, json.dumps(record.labels), record.first_seen_ms,
            record.last_seen_ms, record.last_seq, int(record.online), json.dumps(series),
            record.state.value, record.state_since_ms, json.dumps(stats))


def fleet_of(devices: int) -> FleetState:
    fleet = FleetState(started_ms=T0)
    for i in range(devices):
        fleet.observe_birth(device_id(i), birth(i, T0), T0)
    return fleet


def frames_to(fleet: FleetState, seq: int, now_ms: int, every: int = 1) -> None:
    """One more frame from every `every`-th device (decoded as the pipeline hands them over)."""
    for i in range(0, len(fleet.devices), every):
        rows = decode_telemetry_rows(frame_bytes(i, seq, now_ms))
        fleet.observe_telemetry(device_id(i), rows, now_ms)


def checkpoint_case(fleet: FleetState, db_path: Path, variant: str, seq: int) -> dict[str, float]:
    frames_to(fleet, seq, T0 + seq * INTERVAL_MS)
    ids = list(fleet.devices)
    make: Callable[[DeviceRecord], tuple[Any, ...]] = (
        legacy_row if variant == "before" else DeviceRecord.row)
    started = time.process_time()
    rows = [make(fleet.devices[d]) for d in ids]
    built = time.process_time() - started
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    apply_migrations(conn)
    started = time.process_time()
    for start in range(0, len(rows), CHECKPOINT_CHUNK):
        conn.execute("BEGIN")
        store.checkpoint_devices(conn, rows[start:start + CHECKPOINT_CHUNK])
        conn.execute("COMMIT")
    written = time.process_time() - started
    size = sum(len(r[10]) for r in rows) / len(rows)
    conn.close()
    return {"row_us": built / len(ids) * 1e6, "write_us": written / len(ids) * 1e6,
            "cpu_s": built + written, "latest_bytes": size}


# ---------------------------------------------------------------------- fleet metrics
def metrics_case(fleet: FleetState, variant: str, every: int, seq0: int) -> dict[str, float]:
    encoder = SeriesEncoder((("gateway", "gw-1"),))
    counted = [0]

    async def commit(device: str, entries: Any) -> int:
        counted[0] += len(entries)
        return 1

    job = FleetMetricsJob(fleet, encoder, lambda r: 0, "gw-1", commit)
    ticks = int(FLEET_METRICS_KEEPALIVE_S * 1000 // TICK_MS)
    now = T0 + seq0 * TICK_MS
    asyncio.run(job.tick(now))  # a start writes everything: not what is measured
    cpu = 0.0
    entries = 0
    for n in range(1, ticks + 1):
        now += TICK_MS
        frames_to(fleet, seq0 + n, now, every)
        counted[0] = 0
        started = time.process_time()
        if variant == "before":
            counted[0] = sum(1 for _ in fleet_metric_entries(fleet, encoder, lambda r: 0,
                                                            "gw-1", now))
        else:
            asyncio.run(job.tick(now))
        cpu += time.process_time() - started
        entries += counted[0]
    return {"tick_cpu_s": cpu / ticks, "tick_entries": entries / ticks}


# ---------------------------------------------------------------------- going dark
async def open_pipeline(path: Path) -> tuple[Pipeline, Database, Buffer]:
    db = Database(path, "normal")
    await db.open()
    state = await db.read(store.load_state)
    restored = restore_state(state, 100)
    compiler = FrameCompiler(SeriesEncoder())
    metrics = GatewayMetrics()
    buffer = Buffer(db, metrics, next_frame_id=state.next_frame_id, frames=state.buffer_frames,
                    size=state.buffer_bytes, max_bytes=10**11, full_policy="block",
                    cache=EntryCache(), decode=stored_frame_decoder(compiler, restored.births))
    config = StoreConfig(db_path=path, synchronous="normal", commit_max_frames=1000,
                         commit_max_delay_s=0.0, max_buffer_bytes=10**11, full_policy="block",
                         ledger_max_ranges=100)  # type: ignore[arg-type]

    class Acks:
        def ack(self, messages: list[InboundMessage]) -> int:
            return len(messages)

        def publish(self, topic: str, payload: bytes, qos: int = 1,
                    retain: bool = False) -> None:
            pass

    pipeline = Pipeline(buffer=buffer, mqtt=Acks(), config=config, limits=Limits(),
                        topic_prefix="fleet", compiler=compiler, fleet=FleetState(),
                        metrics=metrics, state=restored)
    return pipeline, db, buffer


def message(topic: str, payload: bytes, mid: int) -> InboundMessage:
    return InboundMessage(topic, payload, mid, 1, 1, int(time.time() * 1000))


async def dark_case(path: Path, dark: int, variant: str) -> dict[str, float]:
    pipeline, db, _ = await open_pipeline(path)
    live = dark  # the device index that keeps sending
    base = int(time.time() * 1000) - 20_000
    mid = 0
    for start in range(0, dark + 1, 500):
        chunk = range(start, min(start + 500, dark + 1))
        births = [message(f"fleet/{device_id(i)}/birth", encode_birth(birth(i, base)), mid + i)
                  for i in chunk]
        await pipeline.handle(births)
        await pipeline.handle([message(f"fleet/{device_id(i)}/telemetry",
                                       frame_bytes(i, 0, base), mid + i) for i in chunk])
    fleet = FleetState(started_ms=T0)
    for i in range(dark):
        fleet.observe_birth(device_id(i), birth(i, base), T0)
    fleet.take_events()
    tune_gc()  # as the gateway does after its start: the fleet's objects frozen
    if variant == "before":
        job = LifecycleJob(fleet, db, EventHub(), GatewayMetrics(), close_boot=pipeline.close_boot)
        lifecycle_module.SWEEP_CHUNK = 10**9  # the whole sweep at once, as before
    else:
        job = LifecycleJob(fleet, db, EventHub(), GatewayMetrics(), close_boot=None,
                           close_boots=pipeline.close_boots)
        lifecycle_module.SWEEP_CHUNK = SWEEP_CHUNK
    done = asyncio.Event()
    stalls: list[float] = []
    commits: list[float] = []

    busy: list[float] = []

    async def ticker() -> None:
        # The loop's lateness, and the process's CPU meanwhile: on this shared machine a late
        # loop may only have been waiting for a core (then little CPU was spent meanwhile).
        loop = asyncio.get_running_loop()
        while not done.is_set():
            at, cpu_at = loop.time(), time.process_time()
            await asyncio.sleep(0.005)
            stalls.append(loop.time() - at - 0.005)
            busy.append(time.process_time() - cpu_at)

    async def keep_sending() -> None:
        seq = 1
        while not done.is_set():
            started = time.perf_counter()
            await pipeline.handle([message(f"fleet/{device_id(live)}/telemetry",
                                           frame_bytes(live, seq, base + seq), 10**9 + seq)])
            commits.append(time.perf_counter() - started)
            seq += 1
            await asyncio.sleep(0.001)  # ~a frame a millisecond, as a busy broker hands them

    tasks = [asyncio.ensure_future(ticker()), asyncio.ensure_future(keep_sending())]
    await asyncio.sleep(0.05)
    commits.clear()
    stalls.clear()
    busy.clear()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    events = await job.tick(T0 + 6 * INTERVAL_MS)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    done.set()
    await asyncio.gather(*tasks)
    assert events == dark, events
    await db.close()
    gc.unfreeze()
    worst = max(range(len(stalls)), key=stalls.__getitem__)
    return {"wall_s": wall, "cpu_s": cpu, "loop_stall_max_ms": stalls[worst] * 1000,
            "its_cpu_ms": busy[worst] * 1000, "loop_busy_max_ms": max(busy) * 1000,
            "live_commit_max_ms": max(commits) * 1000, "live_frames": len(commits)}


SWEEP_CHUNK = lifecycle_module.SWEEP_CHUNK


# ---------------------------------------------------------------------- main
def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


REPORT: list[str] = []  # everything printed, for --write


def say(line: str) -> None:
    print(line)
    REPORT.append(line)


def compare(name: str, results: dict[str, list[dict[str, float]]]) -> None:
    before, now = median_of(results["before"]), median_of(results["now"])
    say(f"\n{name} (medians of {len(results['now'])})")
    say(f"  {'':24} {'before':>12} {'now':>12} {'now/before':>10}")
    for key in before:
        ratio = now[key] / before[key] if before[key] else float("nan")
        say(f"  {key:24} {before[key]:12.3f} {now[key]:12.3f} {ratio:10.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--dark", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip", default="", help="comma-separated: checkpoint,metrics,dark")
    parser.add_argument("--close-chunk", type=int, default=stage.CLOSE_BOOTS_CHUNK,
                        help="boots closed a transaction (Pipeline.close_boots)")
    parser.add_argument("--write", action="store_true",
                        help='write the "fleet-jobs" section of bench/RESULTS.md')
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    stage.CLOSE_BOOTS_CHUNK = args.close_chunk
    say(f"{args.devices} devices x {SERIES} gauges; {args.dark} go dark")
    fleet = fleet_of(args.devices)
    with tempfile.TemporaryDirectory() as tmp:
        if "checkpoint" not in skip:
            runs: dict[str, list[dict[str, float]]] = {"before": [], "now": []}
            seq = 0
            for r in range(args.repeat):
                for variant in (("before", "now") if r % 2 == 0 else ("now", "before")):
                    seq += 1
                    runs[variant].append(checkpoint_case(
                        fleet, Path(tmp) / f"cp-{variant}.db", variant, seq))
            compare(f"checkpoint of {args.devices} devices (per device: row_us, write_us)", runs)
            # Before, every 30 s wrote every device of a busy fleet; now the periodic loop
            # writes their telemetry's progress every FLEET_VALUES_CHECKPOINT_INTERVAL_S.
            share = FLEET_CHECKPOINT_INTERVAL_S / FLEET_VALUES_CHECKPOINT_INTERVAL_S
            before, now = median_of(runs["before"])["cpu_s"], median_of(runs["now"])["cpu_s"]
            say(f"  CPU s per {FLEET_CHECKPOINT_INTERVAL_S:.0f} s, every device busy: before"
                f" {before:.3f}, now {now * share:.3f} ({now * share / before:.3f})")
        if "metrics" not in skip:
            for every, what in ((1, "every device observed each tick"),
                                (100, "1% observed each tick")):
                runs = {"before": [], "now": []}
                for r in range(args.repeat):
                    for variant in (("before", "now") if r % 2 == 0 else ("now", "before")):
                        runs[variant].append(metrics_case(fleet, variant, every, 100 + r * 10))
                compare(f"fleet metrics tick, {what}", runs)
        if "dark" not in skip:
            runs = {"before": [], "now": []}
            for r in range(args.repeat):
                for variant in (("before", "now") if r % 2 == 0 else ("now", "before")):
                    path = Path(tmp) / f"dark-{variant}-{r}.db"
                    runs[variant].append(asyncio.run(dark_case(path, args.dark, variant)))
            compare(f"going dark: {args.dark} devices time out at once, one keeps sending", runs)
    if args.write:
        body = ("## Fleet-wide jobs (bench/fleet_jobs.py)\n\n`" + " ".join(sys.argv) + "`\n\n```"
                + "\n".join(REPORT) + "\n```")
        results_file.write_section(Path(__file__).with_name("RESULTS.md"), "fleet-jobs", body)


if __name__ == "__main__":
    main()
