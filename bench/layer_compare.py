"""Gateway CPU per frame on the old SQLite layer and on aiosqlite, measured in one run.

`bench/throughput.py --sqlite-layers legacy,aiosqlite` runs the gateway once per layer for each
workload in each repeat (no bare subscriber: here the old layer is the baseline), started through
bench/gateway_launcher.py, alternating which goes first (bench/same_run.py). This module names
the two layers and writes the "sqlite-layer" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics

import report
import same_run
from gateway_launcher import LAYERS
from same_run import Comparison, Figure, Runs, Variant

SECTION = "sqlite-layer"
BAR = 0.03  # issue 12: gateway CPU per frame on aiosqlite at most 3% above the old layer's
CPU = Figure("cpu_us_per_frame", "µs/frame", "", 1, lower_is_better=True)
RATE = Figure("frames_per_s", "frames/s", "", 0, lower_is_better=False)


def parse_layers(text: str) -> Comparison:
    """legacy is the baseline; the layer named first runs first in repeat 1."""
    layers = tuple(name.strip() for name in text.split(",") if name.strip())
    if sorted(layers) != sorted(LAYERS):
        raise argparse.ArgumentTypeError(f"{text!r}: expected the two layers, "
                                         f"e.g. {','.join(LAYERS)}")
    legacy, aiosqlite = (Variant(name, mode=name) for name in LAYERS)
    return Comparison(legacy, aiosqlite, first=layers[0])


def verdict(ratio: float) -> str:
    met = "**met**" if ratio <= 1 + BAR else "**missed**"
    return f"Bar: at most {BAR:.0%} above the old layer ({met})."


def _workload_markdown(comparison: Comparison, wl: argparse.Namespace, runs: Runs) -> list[str]:
    old, new = (statistics.median(float(r[CPU.key]) for r in runs[n]) for n in comparison.names)
    found = same_run.problems(runs, report.problems)
    return [
        f"### {wl.devices:,} devices x {wl.frames} frames x {wl.samples} samples", "",
        *same_run.case_table(comparison, runs, (CPU, RATE)), "",
        same_run.figure_line(comparison, runs, CPU) + " " + verdict(new / old), "",
        "Output checks (every run, both layers): "
        + ("all passed." if not found else "FAILED: " + "; ".join(found)), "",
    ]


def markdown(*, args: argparse.Namespace, command: str, machine: dict[str, str],
             workloads: list[argparse.Namespace], results: list[Runs]) -> str:
    comparison: Comparison = args.sqlite_layers
    out = [
        "## SQLite layer: hand-written executor vs aiosqlite (`bench/throughput.py "
        "--sqlite-layers`)",
        "",
        f"- Command: `{command}`",
        f"- Date: {machine['date']}; commit {machine['commit']}",
        f"- Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory']} RAM, "
        f"Linux {machine['kernel']}; shared with other work while it ran",
        "- Layers: `legacy` = bench/legacy_db.py (one ThreadPoolExecutor thread per connection, "
        "as before issue 12); `aiosqlite` = gateway/buffer/db.py (one aiosqlite connection "
        "each, a whole unit of work per hop). Same gateway otherwise, default settings, started "
        "by bench/gateway_launcher.py",
        f"- Repeats: {args.repeat}; the two layers alternate which runs first",
        "- Figure: gateway CPU (user+sys) per telemetry frame while the telemetry is taken in, "
        "stored and forwarded (as in the throughput section)",
        "",
    ]
    for wl, runs in zip(workloads, results, strict=True):
        out += _workload_markdown(comparison, wl, runs)
    pooled = [r for runs in results for r in same_run.ratios(comparison, runs, CPU)]
    out += [same_run.pooled_line(comparison, results, CPU) + " "
            + verdict(statistics.median(pooled))]
    return "\n".join(out).rstrip("\n")
