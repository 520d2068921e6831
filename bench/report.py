"""Formatting of bench/throughput.py's results: a console table and bench/RESULTS.md."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TARGET_FRAMES_PER_S = 6000  # first release
TARGET_CPU_RATIO = 2.0
GOAL_FRAMES_PER_S = 10_000  # issue 3
GOAL_CPU_RATIO = 1.3

Row = tuple[str, Callable[[dict[str, Any]], str] | None, Callable[[dict[str, Any]], str] | None]


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def ratio(bare: dict[str, Any], gw: dict[str, Any]) -> float:
    return float(gw["cpu_us_per_frame"]) / float(bare["cpu_us_per_frame"])


def _rows(args: argparse.Namespace) -> list[Row]:
    return [
        ("telemetry frames (messages)", lambda r: _n(r["messages"]),
         lambda r: _n(r["messages"])),
        ("samples", lambda r: _n(r["messages"] * args.samples),
         lambda r: _n(r["messages"] * args.samples)),
        ("end-to-end time", lambda r: f"{r['e2e_s']:.2f} s", lambda r: f"{r['e2e_s']:.2f} s"),
        ("  of which until all stored (gateway)", None, lambda r: f"{r['stored_s']:.2f} s"),
        ("**frames/s end to end**", lambda r: _n(r["frames_per_s"]),
         lambda r: _n(r["frames_per_s"])),
        ("**samples/s end to end**", lambda r: _n(r["samples_per_s"]),
         lambda r: _n(r["samples_per_s"])),
        ("consumer CPU (user+sys)", lambda r: f"{r['cpu_s']:.2f} s",
         lambda r: f"{r['cpu_s']:.2f} s"),
        ("**consumer CPU per frame**", lambda r: f"{r['cpu_us_per_frame']:.1f} µs",
         lambda r: f"{r['cpu_us_per_frame']:.1f} µs"),
        ("consumer peak RSS (VmHWM)", lambda r: f"{r['rss_mb']:.0f} MB",
         lambda r: f"{r['rss_mb']:.0f} MB"),
        ("broker (mosquitto) CPU per frame", lambda r: f"{r['broker_us_per_msg']:.1f} µs",
         lambda r: f"{r['broker_us_per_msg']:.1f} µs"),
        ("VictoriaMetrics CPU", None, lambda r: f"{r['vm_cpu_s']:.2f} s"),
        ("CPU steal by the hypervisor, all CPUs", lambda r: f"{r['steal_s']:.2f} s",
         lambda r: f"{r['steal_s']:.2f} s"),
        ("load generator publish rate", lambda r: f"{_n(r['loadgen_rate'])} msg/s",
         lambda r: f"{_n(r['loadgen_rate'])} msg/s"),
        ("load generator CPU (sending)",
         lambda r: f"{r['loadgen_cpu_s']:.2f} s ({r['loadgen_us_per_msg']:.1f} µs/msg)",
         lambda r: f"{r['loadgen_cpu_s']:.2f} s ({r['loadgen_us_per_msg']:.1f} µs/msg)"),
    ]


def table(bare: dict[str, Any], gw: dict[str, Any], args: argparse.Namespace) -> str:
    lines = ["| | bare paho subscriber | fleetgate gateway |", "|---|---:|---:|"]
    for label, of_bare, of_gw in _rows(args):
        lines.append(f"| {label} | {of_bare(bare) if of_bare else '—'} | "
                     f"{of_gw(gw) if of_gw else '—'} |")
    lines.append(f"| **gateway CPU per frame / bare CPU per message** | 1.00x | "
                 f"**{ratio(bare, gw):.2f}x** |")
    return "\n".join(lines)


def run_line(bare: dict[str, Any], gw: dict[str, Any]) -> str:
    return (f"  bare {bare['frames_per_s']:,.0f} msg/s at {bare['cpu_us_per_frame']:.1f} µs/msg; "
            f"gateway {gw['frames_per_s']:,.0f} frames/s at {gw['cpu_us_per_frame']:.1f} µs/frame "
            f"({ratio(bare, gw):.2f}x), lost samples {gw['lost_samples']:.0f}"
            + (f" (VictoriaMetrics' first read: {gw['vm_first_read_samples']:,.0f} samples, "
               f"complete {gw['vm_settle_s']:.1f} s later)"
               if gw["vm_first_read_samples"] != gw["vm_samples"] else ""))


def problems(gw: dict[str, Any]) -> list[str]:
    """Output checks that failed: a benchmark that loses data has no throughput to report."""
    found = []
    if gw["lost_samples"] != 0:
        found.append(f"VictoriaMetrics holds {gw['vm_samples']:.0f} samples, expected "
                     f"{gw['expected_samples']} ({gw['lost_samples']:.0f} lost; metrics short: "
                     f"{gw['short_metrics']})")
    if gw["vm_series"] != gw["expected_series"]:
        found.append(f"VictoriaMetrics has {gw['vm_series']:.0f} series, expected "
                     f"{gw['expected_series']}")
    if gw["values_ok"] is not True:
        found.append("sum of bench_m00 values in VictoriaMetrics differs from what was sent")
    if gw["frames_stored"] != gw["expected_frames_stored"]:
        found.append(f"gateway stored {gw['frames_stored']:.0f} frames, expected "
                     f"{gw['expected_frames_stored']}")
    for key in ("duplicates", "invalid", "dead_letters"):
        if gw[key]:
            found.append(f"gateway counted {gw[key]:.0f} {key.replace('_', ' ')}")
    return found


def _verdict(bare: dict[str, Any], gw: dict[str, Any]) -> str:
    rate, cost = gw["frames_per_s"], ratio(bare, gw)

    def met(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    return (f"First-release targets: >= {TARGET_FRAMES_PER_S:,} frames/s end to end "
            f"({met(rate >= TARGET_FRAMES_PER_S)}: {rate:,.0f}) at <= {TARGET_CPU_RATIO:.0f}x "
            f"the bare subscriber's CPU per message ({met(cost <= TARGET_CPU_RATIO)}: "
            f"{cost:.2f}x). Issue 3 goals: >= {GOAL_FRAMES_PER_S:,} frames/s "
            f"({met(rate >= GOAL_FRAMES_PER_S)}) at <= {GOAL_CPU_RATIO}x "
            f"({met(cost <= GOAL_CPU_RATIO)}).")


def _runs_table(bare_runs: list[dict[str, Any]], gw_runs: list[dict[str, Any]]) -> str:
    lines = ["| run | bare msg/s | bare µs/msg | gateway frames/s | gateway µs/frame | ratio |",
             "|---:|---:|---:|---:|---:|---:|"]
    for i, (b, g) in enumerate(zip(bare_runs, gw_runs, strict=True), 1):
        lines.append(f"| {i} | {b['frames_per_s']:,.0f} | {b['cpu_us_per_frame']:.1f} | "
                     f"{g['frames_per_s']:,.0f} | {g['cpu_us_per_frame']:.1f} | "
                     f"{ratio(b, g):.2f}x |")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class WorkloadResult:
    """One workload's figures: its args (devices, frames...), medians and every run."""

    args: argparse.Namespace
    bare: dict[str, Any]
    gw: dict[str, Any]
    bare_runs: list[dict[str, Any]]
    gw_runs: list[dict[str, Any]]

    @property
    def title(self) -> str:
        a = self.args
        return f"{a.devices:,} devices x {a.frames} frames x {a.samples} samples"


def _workload_markdown(result: WorkloadResult) -> list[str]:
    args, bare, gw = result.args, result.bare, result.gw
    found = problems(gw)
    out = [
        f"### {result.title}",
        "",
        f"{args.devices * args.frames:,} telemetry frames, "
        f"{args.devices * args.frames * args.samples:,} samples, QoS 1, one birth per device "
        f"first (not timed).",
        "",
        table(bare, gw, args),
        "",
        _verdict(bare, gw),
        "",
    ]
    if len(result.gw_runs) > 1:
        out += ["Per run:", "", _runs_table(result.bare_runs, result.gw_runs), ""]
    out += [
        f"Output check: gateway {gw['frames_stored']:,.0f} frames stored (expected "
        f"{gw['expected_frames_stored']:,}: telemetry + births), {gw['duplicates']:.0f} "
        f"duplicates, {gw['invalid']:.0f} invalid, {gw['dead_letters']:.0f} dead letters; "
        f"{gw['commits']:,.0f} group commits, {gw['frames_per_commit']:,.0f} messages per "
        f"commit, {gw['commit_ms_avg']:.1f} ms per commit (average, whole run); "
        f"{gw['forward_requests']:,.0f} remote-write requests; the forwarder was at most "
        f"{gw['max_forward_lag']:,.0f} frames behind the last commit (seen by the polls). "
        f"VictoriaMetrics: {gw['vm_samples']:,.0f} samples of `bench_m*` (expected "
        f"{gw['expected_samples']:,}; **lost: {gw['lost_samples']:,.0f}**), "
        f"{gw['vm_series']:,.0f} series (expected {gw['expected_series']:,}); sum of "
        f"`bench_m00` values {'matches' if gw['values_ok'] is True else 'DOES NOT match'} "
        "what was sent."
        + (f" The first read after force_flush showed only {gw['vm_first_read_samples']:,.0f} "
           f"samples; the full count took {gw['vm_settle_s']:.1f} s more to appear."
           if gw["vm_first_read_samples"] != gw["vm_samples"] else "")
        + (" All checks passed." if not found else " FAILED: " + "; ".join(found)),
        "",
    ]
    return out


def markdown(*, args: argparse.Namespace, command: str, machine: dict[str, str],
             results: list[WorkloadResult], profile: str | None,
             profile_file: str | None) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in sorted(args.gateway_settings.items()))
    first = results[0].gw
    out = [
        "## Throughput (`bench/throughput.py`)",
        "",
        f"- Command: `{command}`",
        f"- Date: {machine['date']}; commit {machine['commit']}",
        f"- Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory']} RAM, "
        f"Linux {machine['kernel']}; broker, consumer, VictoriaMetrics and load generator all "
        "share these CPUs",
        f"- Load generator: {args.connections} connections in one process, pre-encoded MQTT "
        "3.1.1 QoS 1 packets",
        "- Gateway settings: defaults (sqlite_synchronous=full: every PUBACK follows an fsynced "
        "commit; dedup by (device, boot, seq) always on; one VictoriaMetrics endpoint)"
        + (f", overridden: {settings}" if settings else ""),
        f"- Repeats: {args.repeat}" + (" (figures are medians; in each repeat every workload "
                                       "runs bare subscriber then gateway, so the baseline "
                                       "sits beside its subject)" if args.repeat > 1 else ""),
        "",
    ]
    for result in results:
        out += _workload_markdown(result)
    out += [
        "#### How to read this",
        "",
        "- *End-to-end time* runs from the load generator's first telemetry PUBLISH to the "
        "moment the consumer is done: for the bare subscriber, its last message; for the "
        "gateway, the first poll of `/api/v1/pipeline` (every 0.1 s) that shows every frame "
        "committed and every endpoint's cursor at the end. Nothing is subtracted: broker "
        "queueing, polling granularity (up to 0.1 s) and the remote-write flush delay are all "
        "included.",
        "- The load generator finishes long before the consumer (see its rate): the broker "
        "queues the backlog, so the consumer, not the generator, sets the pace.",
        "- *Consumer CPU* is utime + stime of all its threads from /proc/<pid>/stat, taken "
        "just before the telemetry starts and just after the consumer is done (births, "
        "startup and imports excluded). For the gateway it includes decoding, dedup, SQLite, "
        "series encoding, PUBACKs, remote write and answering the polls "
        f"({first['polls']} polls x ~{first['poll_cpu_ms']:.1f} ms measured while idle, "
        "first workload).",
        "- *Ratio* = gateway CPU per frame / bare subscriber CPU per message: what the gateway "
        "costs beyond merely receiving and acknowledging QoS 1 messages with paho.",
        "- Every process shares the same CPUs, so wall-clock rates depend on what else runs; "
        "CPU per frame is the steadier figure, and the ratio, measured minutes apart on the "
        "same machine, the steadiest. Use `--repeat 3` for medians. *CPU steal* (from "
        "/proc/stat) is time this virtual machine's CPUs were wanted but given to other "
        "guests: when it is more than a few percent of the wall time, distrust the run.",
        "",
    ]
    if profile is not None:
        out += ["#### Where the gateway's CPU goes (automatic summary)", "",
                f"From one extra gateway run of the first workload ({results[0].title}; "
                "`bench/throughput.py --profile`) under "
                "`py-spy record --pid <gateway pid> --format raw --threads --rate 200 "
                "--nonblocking` (py-spy from PyPI: `.venv/bin/pip install py-spy`, not a "
                "project dependency), summarised by `bench/profile_summary.py`. That run's "
                "timings are not used above: the sampler competes for the same CPUs."
                + (f" Its stacks (line numbers dropped, equal stacks merged): "
                   f"`bench/{profile_file}`." if profile_file else ""), "",
                profile, ""]
    return "\n".join(out)
