"""The memory phase of bench/scale.py, in-process figure: the gateway's Python heap by
tracemalloc, per device known.

For each fleet size a fresh gateway starts with bench/scale_tracemalloc on its PYTHONPATH (its
sitecustomize starts tracemalloc and writes a snapshot on SIGUSR1): a snapshot idle, then births
and two frames per device (the first of the boot and a later one), everything stored and
forwarded, and a second snapshot. The traced bytes of the second minus the first, over the fleet
sizes, give bytes per device (least-squares slope); the source files whose allocations grew most
at the largest size say where they are. This is the Python heap only (not SQLite's page cache,
not the allocator's free lists, not the interpreter itself): VmRSS, measured beside it, is the
whole.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import scale_report
import scale_stack
from throughput import BenchError

BENCH_DIR = Path(__file__).resolve().parent
PROBE_DIR = BENCH_DIR / "scale_tracemalloc"
INTERVAL_MS = 600_000
SNAPSHOT_TIMEOUT_S = 300.0
TOP_FILES = 8


@contextlib.contextmanager
def tracemalloc_environment(out: Path) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "BENCH_TRACEMALLOC_OUT")}
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROBE_DIR), saved["PYTHONPATH"]) if p)
    os.environ["BENCH_TRACEMALLOC_OUT"] = str(out)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _snapshot(pid: int, out: Path, number: int) -> dict[str, Any]:
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + SNAPSHOT_TIMEOUT_S
    while True:
        lines = out.read_text().splitlines() if out.exists() else []
        if len(lines) >= number:
            return dict(json.loads(lines[number - 1]))
        if time.monotonic() > deadline:
            raise BenchError(f"no tracemalloc snapshot {number} from the gateway within "
                             f"{SNAPSHOT_TIMEOUT_S:.0f} s (is {PROBE_DIR} on its path?)")
        time.sleep(0.2)


def run_size(args: argparse.Namespace, devices: int, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "tracemalloc.jsonl"
    with scale_stack.stack(workdir, devices, args.samples, INTERVAL_MS, args.gateway_settings,
                           gateway_env=tracemalloc_environment(out)) as stack:
        pid = stack.pids["gw"]
        idle = _snapshot(pid, out, 1)
        rss_idle = scale_stack.vm_rss_mb(pid)
        stack.ask("births", "acked", args.timeout)
        stack.ask("burst 2", "acked", args.timeout)
        stack.await_stored(3 * devices, args.timeout, f"tracemalloc run, {devices:,} devices")
        loaded = _snapshot(pid, out, 2)
        rss = scale_stack.vm_rss_mb(pid)
    grown = {f: loaded["by_file"].get(f, 0) - idle["by_file"].get(f, 0)
             for f in loaded["by_file"]}
    return {"devices": devices, "traced_idle": idle["traced"], "traced": loaded["traced"],
            "heap_bytes": loaded["traced"] - idle["traced"], "rss_idle_mb": rss_idle,
            "rss_mb": rss, "grown_by_file": dict(sorted(grown.items(), key=lambda kv: -kv[1])
                                                 [:TOP_FILES])}


def _short(path: str) -> str:
    marker = "/work/main/"
    return path.split(marker, 1)[1] if marker in path else path.rsplit("/", 2)[-1]


def markdown(runs: list[dict[str, Any]], samples: int) -> str:
    per_device = scale_report.slope([(r["devices"], r["heap_bytes"]) for r in runs])
    largest = max(runs, key=lambda r: r["devices"])
    lines = [
        "In-process (tracemalloc in the gateway, a separate run per size; births + 2 frames "
        "per device, then a snapshot after a full collection): Python heap grown per fleet "
        "size " + ", ".join(f"{r['devices']:,}: {r['heap_bytes'] / 1e6:,.1f} MB "
                            f"(VmRSS {r['rss_mb']:,.0f} MB)" for r in runs)
        + (f"; slope **{per_device:,.0f} bytes per device, {per_device / samples:,.0f} per "
           "series**." if per_device is not None else "."),
        "", f"Largest holders grown at {largest['devices']:,} devices (by allocating file): "
        + ", ".join(f"{_short(f)} {b / 1e6:,.1f} MB" for f, b in
                    largest["grown_by_file"].items() if b > 0) + ".",
    ]
    return "\n".join(lines)


def run_memory(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    runs = [run_size(args, n, workdir / f"tracemalloc-{n}") for n in args.tracemalloc_sizes]
    return {"runs": runs, "text": markdown(runs, args.samples)}
