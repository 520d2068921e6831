"""Backlog drain: how fast the gateway empties a full SQLite buffer into VictoriaMetrics after
an outage, and how late live frames are meanwhile; vmagent draining the same samples from its
disk queue is the baseline, in the same run.

Per repeat:
  1. baseline: bench/vmagent_peer.py's drain (VM down, the backlog queued in vmagent, VM up);
  2. gateway: Mosquitto and the gateway (GatewayProcess, defaults) with VictoriaMetrics'
     port reserved but VM not started; bench/loadgen.py publishes the backlog (default
     1,000 devices x 300 frames x 20 samples = 300,000 frames) and the bench waits until
     /api/v1/pipeline shows all of it committed. bench/pacer.py (1,000 other devices,
     "live-NNNNN") publishes its births; then, at the same moment, the pacer starts live
     telemetry at --live-rate frames/s (each frame stamped with its publish time) and VM is
     started on the reserved port. Every 0.25 s the bench reads the endpoint's cursor
     (/api/v1/pipeline) and, from VM, the newest live timestamp
     (max(tlast_over_time(bench_m00{device_id=~"live-.*"}[10m])) after force_flush);
     live lateness = poll time - that timestamp (before the first live sample arrives: poll
     time - the first live publish). The drain ends at the first poll where the cursor has
     reached the backlog's last frame; the pacer runs on until live data is within
     CAUGHT_UP_S or LIVE_TAIL_S more seconds pass, then stops. VM must then hold every
     backlog and live sample exactly once (count_over_time).

Drain rate = backlog frames / (end - the first poll where the cursor had moved). The time
from VM ready to that first move is the forwarder's retry back-off, reported apart.

    .venv/bin/python bench/drain.py [--repeat 3] [--profile] [--live-rate 1000]

With `--gateway-trees before=/tmp/old,after=.` it drains instead with the gateway of each source
tree in turn (bench/tree_compare.py), alternating which goes first per repeat, no vmagent
baseline; that goes to the "redesign-drain" section.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import procstat
import profile_summary
import profiling
import results_file
import same_run
import stats
import tree_compare
import vmagent_peer
from loadgen import Workload
from profiling import GatewayProfiler
from throughput import BenchError, Child, parse_setting, start_loadgen

from devstack import GatewayProcess, Mosquitto, VictoriaMetrics, wait_for

BENCH_DIR = Path(__file__).resolve().parent
POLL_S = 0.25
CAUGHT_UP_S = 2.0  # live data this fresh counts as caught up
LIVE_TAIL_S = 60.0  # most seconds the pacer runs on after the backlog is drained
LIVE_MAX_S = 240.0  # live frames are pre-built for this long (the pacer stops after them)
GOAL_FRAMES_PER_S = 30_000
GOAL_LATENESS_S = 5.0
LIVE_QUERY = 'max(tlast_over_time(bench_m00{device_id=~"live-.*"}[10m]))'


def lateness_s(poll_epoch: float, newest_live_s: float | None, first_publish_s: float) -> float:
    """How old the newest live data in the receiver is at `poll_epoch`. Until the first live
    sample arrives, everything published since the first publish is missing."""
    reference = first_publish_s if newest_live_s is None else max(newest_live_s,
                                                                   first_publish_s)
    return max(0.0, poll_epoch - reference)


def _newest_live(vm: VictoriaMetrics) -> float | None:
    result = vm.query(LIVE_QUERY)
    return float(result[0]["value"][1]) if result else None


def run_gateway(args: argparse.Namespace, workdir: Path,
                profiler: GatewayProfiler | None = None,
                variant: same_run.Variant | None = None) -> dict[str, Any]:
    """One gateway drain; `variant` (bench/same_run.py) if given, else the plain gateway."""
    n = args.devices * args.frames
    live_frames_max = int(args.live_rate * LIVE_MAX_S)
    with contextlib.ExitStack() as stack:
        mosq = stack.enter_context(Mosquitto(workdir / "mosquitto"))
        vm = VictoriaMetrics(workdir / "vm")  # port reserved; started after the backlog
        stack.callback(vm.stop)
        options: dict[str, Any] = dict(mqtt_url=mosq.url, settings=args.gateway_settings,
                                       remote_write_urls=[vm.remote_write_url])
        gw = (GatewayProcess(workdir / "gateway", **options) if variant is None else
              variant.gateway(workdir / "gateway", **options))
        with profiler.environment() if profiler else contextlib.nullcontext():
            stack.enter_context(gw)
        assert gw.pid is not None
        loadgen = start_loadgen(args, mosq.url, workdir)
        try:
            ready = loadgen.expect_event("ready", 600)
            loadgen.send("births")
            loadgen.expect_event("births_acked", 120)
            wait_for(lambda: gw.metric("fleetgate_frames_stored_total") >= args.devices, 120,
                     0.1, "gateway did not store the births")
            load0 = time.time()
            loadgen.send("telemetry")
            loadgen.expect_event("done", args.timeout)
            target = args.devices * (args.frames + 1)
            wait_for(lambda: gw.metric("fleetgate_frames_stored_total") >= target,
                     args.timeout, 0.2, "gateway did not commit the backlog")
            load_s = time.time() - load0
        finally:
            loadgen.stop()
        state = gw.pipeline()
        backlog_end = int(state["committed_upto"])
        cursor0 = int(state["endpoints"][0]["cursor"])
        buffer_mb = state["buffer"]["bytes"] / 1e6
        pacer = Child("pacer", [
            sys.executable, str(BENCH_DIR / "pacer.py"), "--mqtt", mosq.url,
            "--devices", str(args.live_devices), "--rate", str(args.live_rate),
            "--frames", str(live_frames_max), "--samples", str(args.samples)], workdir)
        try:
            pacer_ready = pacer.expect_event("ready", 300)
            wait_for(lambda: gw.metric("fleetgate_frames_stored_total")
                     >= target + args.live_devices, 60, 0.1,
                     "gateway did not store the live devices' births")
            gw_before = procstat.cpu(gw.pid)
            if profiler is not None:
                profiler.start(gw.pid)
            pacer.send("go")
            go = time.time()
            vm.start()
            vm_ready = time.time()
            assert vm.pid is not None
            vm_before = procstat.cpu(vm.pid)
            progress = _follow(gw, vm, go, vm_ready, cursor0, backlog_end, args.timeout)
            gw_cpu = progress.pop("gw_cpu_at_end") - gw_before.seconds
            vm_cpu = progress.pop("vm_cpu_at_end") - vm_before.seconds
            if profiler is not None:
                profiler.stop()
            pacer.send("stop")
            live = pacer.expect_event("done", 60)
        finally:
            pacer.stop()
        if live["acked"] != live["sent"]:
            raise BenchError(f"pacer: {live['sent']} live frames sent, {live['acked']} acked")
        wait_for(lambda: gw.metric("fleetgate_frames_stored_total")
                 >= target + args.live_devices + live["sent"], 60, 0.1,
                 "gateway did not store every live frame")
        wait_for(gw.caught_up, 120, 0.1, "gateway did not forward every live frame")
        expected_backlog = n * args.samples
        expected_live = live["sent"] * args.samples
        backlog_vm = vmagent_peer.count_samples(
            vm, '{__name__=~"bench_m[0-9]+",device_id=~"bench-.*"}', int(ready["base_ms"]),
            expected_backlog)
        live_vm = vmagent_peer.count_samples(
            vm, '{__name__=~"bench_m[0-9]+",device_id=~"live-.*"}', int(live["first_ms"]),
            expected_live)
        rss = procstat.peak_rss_mb(gw.pid)
        duplicates = gw.metric("fleetgate_frames_duplicate_total")
        dead = gw.metric("fleetgate_forward_dead_letters_total")
    drain_s = progress["end"] - progress["first_move"]
    late = progress["lateness"]
    return {
        "frames": n, "samples": expected_backlog, "load_s": load_s, "buffer_mb": buffer_mb,
        "pacer_encode_cpu_s": pacer_ready["encode_cpu_s"], "vm_start_s": vm_ready - go,
        "first_delivery_s": progress["first_move"] - vm_ready, "drain_s": drain_s,
        "since_ready_s": progress["end"] - vm_ready,
        "frames_per_s": n / drain_s, "samples_per_s": expected_backlog / drain_s,
        "gw_cpu_s": gw_cpu, "gw_us_per_frame": gw_cpu / n * 1e6, "vm_cpu_s": vm_cpu,
        "gw_rss_mb": rss, "live_sent": live["sent"], "live_cpu_s": live["cpu_s"],
        "live_rate": live["sent"] / live["wall_s"], "live_max_lag_s": live["max_lag_s"],
        "live_at_end": progress["live_at_end"],
        "lateness_p50_s": stats.percentile(late, 50), "lateness_max_s": max(late),
        "lateness_at_end_s": progress["lateness_at_end"],
        "live_caught_up_s": progress["caught_up"] - progress["end"]
        if progress["caught_up"] is not None else None,
        "backlog_vm": backlog_vm, "live_vm": live_vm,
        "lost_samples": expected_backlog + expected_live - backlog_vm - live_vm,
        "duplicates": duplicates, "dead_letters": dead, **same_run.provenance(gw),
    }


def _follow(gw: GatewayProcess, vm: VictoriaMetrics, go: float, vm_ready: float,
            cursor0: int, backlog_end: int, timeout: float) -> dict[str, Any]:
    """Poll cursor and live lateness until the backlog is forwarded and live data caught up."""
    assert gw.pid is not None and vm.pid is not None
    first_move: float | None = None
    end: float | None = None
    caught_up: float | None = None
    lateness: list[float] = []
    out: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(POLL_S)
        cursor = int(gw.pipeline()["endpoints"][0]["cursor"])
        now = time.time()
        late = lateness_s(now, _newest_live(vm), go)
        if first_move is None and cursor > cursor0:
            first_move = now
        if end is None:
            lateness.append(late)
            if cursor >= backlog_end:
                end = now
                out.update(gw_cpu_at_end=procstat.cpu(gw.pid).seconds,
                           vm_cpu_at_end=procstat.cpu(vm.pid).seconds,
                           lateness_at_end=late, live_at_end=cursor)
        if end is not None and late <= CAUGHT_UP_S:
            caught_up = now
        if end is not None and (caught_up is not None or now - end > LIVE_TAIL_S):
            assert first_move is not None
            return {**out, "first_move": first_move, "end": end, "caught_up": caught_up,
                    "lateness": lateness}
        if time.monotonic() > deadline:
            raise BenchError(f"drain not done within {timeout:.0f} s: cursor {cursor} of "
                             f"{backlog_end}; pipeline {gw.pipeline()}")


# ---------------------------------------------------------------------------- report
def markdown(args: argparse.Namespace, command: str, machine: dict[str, str],
             gw_runs: list[dict[str, Any]], agent_runs: list[dict[str, Any]],
             profile: str | None) -> str:
    g, a = stats.medians(gw_runs), stats.medians(agent_runs)
    ratio = g["frames_per_s"] / a["frames_per_s"]
    lost = sum(r["lost_samples"] for r in gw_runs + agent_runs)
    fast = g["frames_per_s"] >= GOAL_FRAMES_PER_S
    fresh = g["lateness_max_s"] < GOAL_LATENESS_S
    caught = [r["live_caught_up_s"] for r in gw_runs]

    def met(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    out = [
        f"## Backlog drain (`bench/drain.py`){args.title}",
        "",
        f"- Command: `{command}`",
        f"- Date: {machine['date']}; commit {machine['commit']}; {machine['cpus']} CPUs "
        f"({machine['cpu_model']}) shared by broker, gateway, VictoriaMetrics and publishers",
        f"- Backlog: {args.devices:,} devices x {args.frames} frames x {args.samples} samples = "
        f"{args.devices * args.frames:,} frames ({g['buffer_mb']:.0f} MB in the gateway's "
        f"buffer), loaded through MQTT with VictoriaMetrics down (loading took "
        f"{g['load_s']:.0f} s); live meanwhile: {args.live_devices:,} other devices, "
        f"{args.live_rate:,.0f} frames/s in total (bench/pacer.py)",
        "- Gateway settings: defaults" + (", overridden: " + ", ".join(
            f"{k}={v}" for k, v in sorted(args.gateway_settings.items()))
            if args.gateway_settings else ""),
        f"- Baseline in the same run: vmagent draining the same {a['samples']:,} samples "
        "(same series and batches) from its queue into a fresh VictoriaMetrics, no live load",
        f"- Repeats: {len(gw_runs)}" + (" (medians; vmagent then gateway in each)"
                                        if len(gw_runs) > 1 else ""),
        "",
        "| | vmagent (baseline) | fleetgate gateway |",
        "|---|---:|---:|",
        f"| **drain frames/s** (backlog / time from first delivery to last) | "
        f"{a['frames_per_s']:,.0f} | **{g['frames_per_s']:,.0f}** ({ratio:.2f}x vmagent) |",
        f"| drain samples/s | {a['samples_per_s']:,.0f} | {g['samples_per_s']:,.0f} |",
        f"| drain time | {a['drain_s']:.1f} s | {g['drain_s']:.1f} s |",
        f"| VM ready -> first delivery (retry back-off) | {a['first_delivery_s']:.1f} s | "
        f"{g['first_delivery_s']:.1f} s |",
        f"| CPU per drained frame (20 samples) | {a['vmagent_us_per_sample'] * 20:.1f} µs | "
        f"{g['gw_us_per_frame']:.1f} µs (incl. live ingest) |",
        f"| VictoriaMetrics CPU over the drain | {a['vm_cpu_s']:.1f} s | {g['vm_cpu_s']:.1f} s |",
        f"| live lateness during the drain, p50 / max | — | {g['lateness_p50_s']:.1f} s / "
        f"**{g['lateness_max_s']:.1f} s** |",
        "| live data back within "
        f"{CAUGHT_UP_S:.0f} s of now, after the drain | — | "
        + ", ".join(f"not within {LIVE_TAIL_S:.0f} s" if c is None else f"{c:.1f} s"
                    for c in caught) + " |",
        f"| live frames published (rate reached) | — | {g['live_sent']:,.0f} "
        f"({g['live_rate']:,.0f}/s; pacer CPU {g['live_cpu_s']:.2f} s) |",
        f"| gateway peak RSS | — | {g['gw_rss_mb']:.0f} MB |",
        f"| samples lost / duplicated | {sum(r['lost_samples'] for r in agent_runs):,.0f} / —"
        f" | {sum(r['lost_samples'] for r in gw_runs):,.0f} / "
        f"{sum(r['duplicates'] for r in gw_runs):,.0f} |",
        "",
        "Per run (vmagent / gateway drain frames/s; gateway max lateness): " + ", ".join(
            f"{x['frames_per_s']:,.0f} / {y['frames_per_s']:,.0f}; {y['lateness_max_s']:.1f} s"
            for x, y in zip(agent_runs, gw_runs, strict=True)) + ".",
        "",
        f"Goals: drain >= {GOAL_FRAMES_PER_S:,} frames/s ({met(fast)}: "
        f"{g['frames_per_s']:,.0f}) while live data stays under {GOAL_LATENESS_S:.0f} s late "
        f"({met(fresh)}: {g['lateness_max_s']:.1f} s at worst). "
        + ("VictoriaMetrics holds every backlog and live sample exactly once (count_over_time "
           "equals what was sent) in every run." if lost == 0 else
           f"**{lost:,.0f} samples missing or extra in VictoriaMetrics.**"),
        "",
        "Lateness is measured at VictoriaMetrics: the age of the newest live sample it "
        f"returns, polled every {POLL_S} s after a force_flush; live frames are stamped with "
        "their publish time. " + (
            "With `remote_write_live_first` the forwarder opens a live lane and alternates "
            "live and backlog requests, so live frames go ahead of the backlog."
            if args.gateway_settings.get("remote_write_live_first") == "true" else
            "By default the forwarder sends strictly in commit order with one request in "
            "flight, so live frames committed after the backlog wait until the backlog is out: "
            "their lateness grows with the drain time.")
        + " Gateway CPU per drained frame is its whole CPU from VM start to the end of the "
        "drain divided by backlog frames, so it includes "
        "ingesting the live frames of that period.",
    ]
    if profile is not None:
        out += ["", "### Where the gateway's drain CPU goes", "",
                "One extra gateway drain under `py-spy record --threads --rate 200 "
                "--nonblocking` from VM start to the end of the drain (timings of that run "
                "not used above), summarised by `bench/profile_summary.py`:", "", profile]
    return "\n".join(out)


def problems(run: dict[str, Any]) -> list[str]:
    """Output checks of one gateway drain that failed."""
    return [f"{run[key]:,.0f} {what}" for key, what in (("lost_samples", "samples lost"),
                                                         ("duplicates", "duplicates"))
            if run[key]]


def compare_trees(args: argparse.Namespace, command: str, root: Path) -> int:
    """The drain with the gateway of each source tree, alternating, per repeat."""
    comparison: same_run.Comparison = args.gateway_trees
    case = f"{args.devices}x{args.frames}"

    def run(i: int, _: str, variant: same_run.Variant, attempt: int) -> dict[str, Any]:
        return run_gateway(args, root / f"run{i}-{variant.name}-{attempt}", variant=variant)

    def on_pair(_: str, runs: same_run.Runs) -> None:
        for figure in tree_compare.DRAIN_FIGURES:
            print("  " + same_run.console_line(comparison, case, runs, figure), flush=True)

    results = same_run.measure(comparison, args.repeat, [case], run, on_pair,
                               remove=None if args.workdir else root)
    if results is None:
        return 2
    runs, = results
    text = tree_compare.drain_markdown(
        comparison=comparison, command=command, machine=procstat.machine(),
        repeat=args.repeat, runs=runs, check=problems,
        title=f"Backlog {args.devices:,} devices x {args.frames} frames x {args.samples} "
        f"samples; live {args.live_devices:,} devices at {args.live_rate:,.0f} frames/s")
    return same_run.report(args.results, args.section or tree_compare.DRAIN_SECTION, text,
                           same_run.problems(runs, problems))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=1000, help="backlog devices")
    ap.add_argument("--frames", type=int, default=300, help="backlog frames per device")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--connections", type=int, default=4, help="load generator connections")
    ap.add_argument("--live-devices", type=int, default=1000)
    ap.add_argument("--live-rate", type=float, default=1000.0, help="live frames/s in total")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--profile", action="store_true",
                    help="one more gateway drain under py-spy; its summary goes to RESULTS.md")
    ap.add_argument("--gateway-setting", action="append", type=parse_setting, default=[],
                    metavar="KEY=VALUE")
    ap.add_argument("--timeout", type=float, default=600, help="per phase, seconds")
    ap.add_argument("--results", type=Path, default=BENCH_DIR / "RESULTS.md")
    ap.add_argument("--workdir", type=Path, default=None, help="keep service dirs here")
    ap.add_argument("--section", default=None,
                    help="RESULTS.md section to write (one per gateway configuration; default "
                    f"drain, or {tree_compare.DRAIN_SECTION} with --gateway-trees)")
    ap.add_argument("--title", default="", help="appended to the section's heading")
    ap.add_argument("--gateway-trees", type=tree_compare.parse_trees, default=None,
                    metavar="NAME=PATH,NAME=PATH",
                    help="instead: the gateway imported from each source tree (the first is "
                    "the baseline), alternating, in each repeat, e.g. before=/tmp/old,after=.")
    args = ap.parse_args(argv)
    args.gateway_settings = dict(args.gateway_setting)
    command = shlex.join([".venv/bin/python", "bench/drain.py",
                          *(sys.argv[1:] if argv is None else argv)])
    root = args.workdir or Path(tempfile.mkdtemp(prefix="fleetgate-drain-"))
    if args.gateway_trees:
        return compare_trees(args, command, root)
    args.section = args.section or "drain"
    workload = Workload.ending_in_past(args.devices, args.frames, args.samples)
    bodies = vmagent_peer.build_requests(workload)
    gw_runs: list[dict[str, Any]] = []
    agent_runs: list[dict[str, Any]] = []
    profile: str | None = None
    try:
        for i in range(args.repeat):
            print(f"run {i + 1}/{args.repeat}: vmagent drain ...", flush=True)
            agent_runs.append(vmagent_peer.run_drain(workload, bodies, root / f"run{i}-vmagent"))
            print(f"run {i + 1}/{args.repeat}: gateway drain ...", flush=True)
            gw_runs.append(run_gateway(args, root / f"run{i}-gateway"))
            a, g = agent_runs[-1], gw_runs[-1]
            print(f"  vmagent {a['frames_per_s']:,.0f} frames/s; gateway "
                  f"{g['frames_per_s']:,.0f} frames/s ({g['gw_us_per_frame']:.1f} µs/frame), "
                  f"live lateness p50 {g['lateness_p50_s']:.1f} s max "
                  f"{g['lateness_max_s']:.1f} s, lost {g['lost_samples']:,.0f}", flush=True)
        if args.profile:
            print("profiling a gateway drain (an extra run under py-spy) ...", flush=True)
            profiler = GatewayProfiler(root / "profile")
            profiled = run_gateway(args, root / "profile-gateway", profiler)
            profile = (profiling.gc_markdown(profiler.gc_time(), profiled["gw_cpu_s"])
                       + "\n\n" + profile_summary.markdown(profile_summary.load(profiler.raw)))
    except (BenchError, profiling.ProfilerError, TimeoutError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    text = markdown(args, command, procstat.machine(), gw_runs, agent_runs, profile)
    print(text)
    results_file.write_section(args.results, args.section, text)
    lost = sum(r["lost_samples"] for r in gw_runs + agent_runs)
    dups = sum(r["duplicates"] for r in gw_runs)
    if lost or dups:
        print(f"CHECK FAILED: {lost:,.0f} samples lost, {dups:,.0f} duplicates",
              file=sys.stderr)
    return 1 if lost or dups else 0


if __name__ == "__main__":
    sys.exit(main())
