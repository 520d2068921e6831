"""Gateway CPU per frame on the old SQLite layer and on aiosqlite, measured in one run.

`bench/throughput.py --sqlite-layers legacy,aiosqlite` runs the gateway once per layer for each
workload in each repeat (no bare subscriber: here the old layer is the baseline), started through
bench/gateway_launcher.py. The layers alternate which goes first from one repeat to the next, so
that a drift of the shared machine during a repeat does not always favour the same one. This
module starts such a gateway and writes the "sqlite-layer" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import report
from gateway_launcher import LAYERS

from devstack import GatewayProcess

BENCH_DIR = Path(__file__).resolve().parent
SECTION = "sqlite-layer"
BAR = 0.03  # issue 12: gateway CPU per frame on aiosqlite at most 3% above the old layer's


class LayeredGateway(GatewayProcess):
    """The gateway started by bench/gateway_launcher.py on one SQLite layer."""

    def __init__(self, *args: Any, sqlite_layer: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sqlite_layer = sqlite_layer

    def _command(self, binary: str) -> list[str]:
        return [*self.command_prefix, binary, str(BENCH_DIR / "gateway_launcher.py"),
                self.sqlite_layer, "run"]


def parse_layers(text: str) -> tuple[str, ...]:
    layers = tuple(name.strip() for name in text.split(",") if name.strip())
    if sorted(layers) != sorted(LAYERS):
        raise argparse.ArgumentTypeError(f"{text!r}: expected the two layers, "
                                         f"e.g. {','.join(LAYERS)}")
    return layers


def order(layers: tuple[str, ...], repeat: int) -> tuple[str, ...]:
    """The layers in the order repeat number `repeat` (from 0) runs them: alternating."""
    return layers if repeat % 2 == 0 else layers[::-1]


def _us(run: dict[str, Any]) -> float:
    return float(run["cpu_us_per_frame"])


def paired_ratios(runs: dict[str, list[dict[str, Any]]]) -> list[float]:
    """aiosqlite / legacy CPU per frame of each repeat (the two ran back to back)."""
    return [_us(n) / _us(o) for o, n in zip(*(runs[x] for x in LAYERS), strict=True)]


def summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Median µs per frame of each layer, their ratio, and the per-repeat ratios' median and
    spread (how much two back-to-back runs differ on this machine: the noise)."""
    old, new = (statistics.median(_us(r) for r in runs[name]) for name in LAYERS)
    paired = paired_ratios(runs)
    return {"legacy_us": old, "aiosqlite_us": new, "ratio": new / old,
            "paired_ratio": statistics.median(paired), "low": min(paired), "high": max(paired)}


def verdict(ratio: float) -> str:
    met = "**met**" if ratio <= 1 + BAR else "**missed**"
    return f"Bar: at most {BAR:.0%} above the old layer ({met})."


def run_line(name: str, runs: dict[str, list[dict[str, Any]]]) -> str:
    last = {layer: _us(r[-1]) for layer, r in runs.items()}
    return (f"{name}: legacy {last['legacy']:.1f} µs/frame, aiosqlite "
            f"{last['aiosqlite']:.1f} µs/frame ({last['aiosqlite'] / last['legacy']:.3f}x)")


def problems(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    return [f"{layer} run {i}: {p}" for layer, rs in runs.items()
            for i, run in enumerate(rs, 1) for p in report.problems(run)]


def _workload_markdown(wl: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    s = summary(runs)
    lines = [
        f"### {wl.devices:,} devices x {wl.frames} frames x {wl.samples} samples",
        "",
        "| repeat | first | legacy µs/frame | aiosqlite µs/frame | aiosqlite / legacy | "
        "legacy frames/s | aiosqlite frames/s |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for i, (o, n) in enumerate(zip(runs["legacy"], runs["aiosqlite"], strict=True)):
        lines.append(f"| {i + 1} | {order(LAYERS, i)[0]} | {_us(o):.1f} | {_us(n):.1f} | "
                     f"{_us(n) / _us(o):.3f} | {o['frames_per_s']:,.0f} | "
                     f"{n['frames_per_s']:,.0f} |")
    lines += [
        "",
        f"Medians: legacy **{s['legacy_us']:.1f}** µs/frame, aiosqlite **{s['aiosqlite_us']:.1f}"
        f"** µs/frame: ratio **{s['ratio']:.3f}** (per-repeat ratios: median "
        f"{s['paired_ratio']:.3f}, from {s['low']:.3f} to {s['high']:.3f}). {verdict(s['ratio'])}",
        "",
    ]
    found = problems(runs)
    lines += ["Output checks (every run, both layers): "
              + ("all passed." if not found else "FAILED: " + "; ".join(found)), ""]
    return lines


def markdown(*, args: argparse.Namespace, command: str, machine: dict[str, str],
             workloads: list[argparse.Namespace],
             results: list[dict[str, list[dict[str, Any]]]]) -> str:
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
        out += _workload_markdown(wl, runs)
    pooled = [r for runs in results for r in paired_ratios(runs)]
    out += [f"All workloads: median of the {len(pooled)} per-repeat ratios "
            f"**{statistics.median(pooled):.3f}**. {verdict(statistics.median(pooled))}"]
    return "\n".join(out).rstrip("\n")
