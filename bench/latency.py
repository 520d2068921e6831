"""Publish-to-receiver latency at half the sustained maximum rate.

Per repeat:
  1. the sustained maximum: bench/throughput.py's gateway run on a short workload (default
     1,000 devices x 60 frames, published as fast as the broker takes them), end-to-end
     frames/s into VictoriaMetrics;
  2. latency: a fresh Mosquitto, VictoriaMetrics and gateway (defaults), with
     bench/rw_recorder.py between gateway and VM; bench/pacer.py publishes --duration
     seconds of QoS 1 telemetry from 1,000 devices at half that maximum (or --rate), every
     frame stamped with its publish time. Afterwards every accepted request's body is
     searched for each frame's bench_m00 sample.

Latency of a frame = the proxy's clock when VictoriaMetrics had answered 2xx to the request
carrying it, minus the frame's timestamp (the pacer's clock, in whole ms, read just before
the PUBLISH is written to the socket). Both clocks are this machine's. It covers broker,
gateway ingest, group commit (fsync) and PUBACK-independent forwarding (batching up to
remote_write_flush_ms), the HTTP request through the proxy and VM's ingestion; not VM's own
~1 s delay before a sample shows in queries. The same figures up to the request's arrival at
the proxy are reported too.

    .venv/bin/python bench/latency.py [--repeat 3] [--rate FRAMES_PER_S] [--duration 30]
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
import results_file
import rw_recorder
import stats
import throughput
import vmagent_peer
from throughput import BenchError, Child, parse_setting

from devstack import GatewayProcess, Mosquitto, VictoriaMetrics, wait_for

BENCH_DIR = Path(__file__).resolve().parent
GOAL_P99_S = 1.0


def latency_summary(latencies: list[float]) -> dict[str, float]:
    return {"p50": stats.percentile(latencies, 50), "p99": stats.percentile(latencies, 99),
            "max": max(latencies)}


def run_latency(args: argparse.Namespace, rate: float, workdir: Path) -> dict[str, Any]:
    frames = int(rate * args.duration)
    with contextlib.ExitStack() as stack:
        mosq = stack.enter_context(Mosquitto(workdir / "mosquitto"))
        vm = stack.enter_context(VictoriaMetrics(workdir / "vm"))
        recorder = stack.enter_context(rw_recorder.Recorder(vm.remote_write_url))
        gw = stack.enter_context(GatewayProcess(
            workdir / "gateway", mqtt_url=mosq.url, remote_write_urls=[recorder.url],
            settings=args.gateway_settings))
        assert gw.pid is not None
        pacer = Child("pacer", [
            sys.executable, str(BENCH_DIR / "pacer.py"), "--mqtt", mosq.url,
            "--devices", str(args.devices), "--rate", str(rate), "--frames", str(frames),
            "--samples", str(args.samples)], workdir)
        try:
            pacer.expect_event("ready", 600)
            wait_for(lambda: gw.metric("fleetgate_frames_stored_total") >= args.devices
                     and gw.caught_up(), 120, 0.1, "gateway did not take the births")
            before = procstat.cpu(gw.pid)
            pacer.send("go")
            live = pacer.expect_event("done", args.duration * 3 + 60)
        finally:
            pacer.stop()
        if live["acked"] != live["sent"]:
            raise BenchError(f"pacer: {live['sent']} frames sent, {live['acked']} acked")
        wait_for(lambda: gw.metric("fleetgate_frames_stored_total")
                 >= args.devices + live["sent"] and gw.caught_up(), 120, 0.1,
                 "gateway did not forward every frame")
        gw_cpu = procstat.cpu_since(before)
        vm_samples = vmagent_peer.count_samples(
            vm, '{__name__=~"bench_m[0-9]+",device_id=~"live-.*"}', int(live["first_ms"]),
            live["sent"] * args.samples)
        requests = list(recorder.requests)
    first_seen: dict[tuple[bytes, int], rw_recorder.Request] = {}
    pattern = rw_recorder.sample_pattern("bench_m00", "live-00000")
    for device, ts, request in rw_recorder.arrivals(requests, pattern):
        first_seen.setdefault((device, ts), request)
    acked = [r.answered - ts / 1000 for (_, ts), r in first_seen.items()]
    received = [r.received - ts / 1000 for (_, ts), r in first_seen.items()]
    if not acked:
        raise BenchError("no live sample found in the requests the gateway sent")
    accepted = [r for r in requests if r.status // 100 == 2]
    return {
        "rate_target": rate, "frames": live["sent"], "rate": live["sent"] / live["wall_s"],
        "pacer_max_lag_s": live["max_lag_s"], "pacer_cpu_s": live["cpu_s"],
        "frames_found": len(first_seen),
        **{f"ack_{k}_s": v for k, v in latency_summary(acked).items()},
        **{f"recv_{k}_s": v for k, v in latency_summary(received).items()},
        "requests": len(accepted), "refused_requests": len(requests) - len(accepted),
        "samples_per_request": live["sent"] * args.samples / max(1, len(accepted)),
        "gw_cpu_s": gw_cpu, "gw_us_per_frame": gw_cpu / live["sent"] * 1e6,
        "vm_samples": vm_samples, "lost_samples": live["sent"] * args.samples - vm_samples,
    }


def sustained_max(args: argparse.Namespace, workdir: Path) -> float:
    devices, frames = args.max_workload
    workload = throughput.for_workload(args, devices, frames)
    result = throughput.run_gateway(workload, workdir)
    problems = throughput.report.problems(result)
    if problems:
        raise BenchError("throughput run for the maximum failed its checks: "
                         + "; ".join(problems))
    return float(result["frames_per_s"])


def markdown(args: argparse.Namespace, command: str, machine: dict[str, str],
             maxima: list[float], runs: list[dict[str, Any]]) -> str:
    m = stats.medians(runs)
    lost = sum(r["lost_samples"] for r in runs)
    missing = sum(r["frames"] - r["frames_found"] for r in runs)
    ok = m["ack_p99_s"] < GOAL_P99_S
    devices, frames = args.max_workload
    rate_text = (f"fixed at {args.rate:,.0f} frames/s (--rate)" if args.rate else
                 "half the sustained maximum measured just before, in the same repeat")
    out = [
        "## Latency at half the sustained maximum (`bench/latency.py`)",
        "",
        f"- Command: `{command}`",
        f"- Date: {machine['date']}; commit {machine['commit']}; {machine['cpus']} CPUs "
        f"({machine['cpu_model']}) shared by broker, gateway, VictoriaMetrics and publisher",
        f"- Sustained maximum: gateway end to end on {devices:,} devices x {frames} frames "
        f"(bench/throughput.py's run): " + ", ".join(f"{x:,.0f}" for x in maxima)
        + " frames/s per repeat",
        f"- Load: {args.devices:,} devices, {args.samples} samples per frame, QoS 1, rate "
        f"{rate_text}, {args.duration:.0f} s per repeat; gateway defaults"
        + (", overridden: " + ", ".join(f"{k}={v}" for k, v in
                                       sorted(args.gateway_settings.items()))
           if args.gateway_settings else ""),
        f"- Repeats: {len(runs)}" + (" (medians)" if len(runs) > 1 else ""),
        "",
        "| publish -> | p50 | p99 | max |",
        "|---|---:|---:|---:|",
        f"| **VictoriaMetrics answered 2xx** | {m['ack_p50_s'] * 1000:,.0f} ms | "
        f"**{m['ack_p99_s'] * 1000:,.0f} ms** | {m['ack_max_s'] * 1000:,.0f} ms |",
        f"| request reached the proxy in front of VM | {m['recv_p50_s'] * 1000:,.0f} ms | "
        f"{m['recv_p99_s'] * 1000:,.0f} ms | {m['recv_max_s'] * 1000:,.0f} ms |",
        "",
        "Per run: " + "; ".join(
            f"{r['rate']:,.0f} frames/s (target {r['rate_target']:,.0f}), p50 "
            f"{r['ack_p50_s'] * 1000:,.0f} ms, p99 {r['ack_p99_s'] * 1000:,.0f} ms, max "
            f"{r['ack_max_s'] * 1000:,.0f} ms, {r['samples_per_request']:,.0f} samples per "
            f"request, gateway {r['gw_us_per_frame']:.0f} µs/frame, pacer "
            f"{r['pacer_cpu_s']:.1f} s CPU (lagged its schedule by at most "
            f"{r['pacer_max_lag_s'] * 1000:,.0f} ms)" for r in runs) + ".",
        "",
        f"Goal: p99 under {GOAL_P99_S:.0f} s ({'**met**' if ok else '**missed**'}: "
        f"{m['ack_p99_s'] * 1000:,.0f} ms). "
        + (f"Every frame was found in the requests and VictoriaMetrics holds every sample "
           f"({sum(r['frames'] for r in runs):,} frames)." if not (lost or missing) else
           f"**{missing:,} frames not found in the requests, {lost:,.0f} samples missing in "
           "VictoriaMetrics.**"),
        "",
        "Latency of a frame = when VictoriaMetrics had answered 2xx to the remote-write "
        "request carrying its `bench_m00` sample (clock of bench/rw_recorder.py, the proxy "
        "in front of VM) minus the frame's timestamp (the publisher's clock in whole ms, read "
        "just before the PUBLISH was written to the socket; same machine, same clock). It "
        "spans broker, gateway ingest, group commit with fsync, the forwarder's batching "
        "(a partial batch waits up to remote_write_flush_ms) and the HTTP round trip "
        "through the proxy; not VictoriaMetrics' own ~1 s before a stored sample is "
        "searchable.",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=None,
                    help="frames/s (default: half the sustained maximum measured first)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of paced load")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--max-workload", type=throughput.parse_workload, default=(1000, 60),
                    metavar="DEVICESxFRAMES", help="workload of the sustained-maximum run")
    ap.add_argument("--connections", type=int, default=4, help="load generator connections")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--gateway-setting", action="append", type=parse_setting, default=[],
                    metavar="KEY=VALUE")
    ap.add_argument("--timeout", type=float, default=600, help="per phase, seconds")
    ap.add_argument("--results", type=Path, default=BENCH_DIR / "RESULTS.md")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep service dirs and logs here (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    args.gateway_settings = dict(args.gateway_setting)
    command = shlex.join([".venv/bin/python", "bench/latency.py",
                          *(sys.argv[1:] if argv is None else argv)])
    root = args.workdir or Path(tempfile.mkdtemp(prefix="fleetgate-latency-"))
    maxima: list[float] = []
    runs: list[dict[str, Any]] = []
    try:
        for i in range(args.repeat):
            if args.rate is None:
                print(f"run {i + 1}/{args.repeat}: sustained maximum ...", flush=True)
                maxima.append(sustained_max(args, root / f"run{i}-max"))
            rate = args.rate or maxima[-1] / 2
            print(f"run {i + 1}/{args.repeat}: latency at {rate:,.0f} frames/s for "
                  f"{args.duration:.0f} s ...", flush=True)
            started = time.monotonic()
            runs.append(run_latency(args, rate, root / f"run{i}-latency"))
            r = runs[-1]
            print(f"  p50 {r['ack_p50_s'] * 1000:,.0f} ms, p99 {r['ack_p99_s'] * 1000:,.0f} "
                  f"ms, max {r['ack_max_s'] * 1000:,.0f} ms at {r['rate']:,.0f} frames/s "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
    except (BenchError, TimeoutError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    text = markdown(args, command, procstat.machine(), maxima, runs)
    print(text)
    results_file.write_section(args.results, "latency", text)
    bad = sum(r["lost_samples"] + r["frames"] - r["frames_found"] for r in runs)
    if bad:
        print("CHECK FAILED: frames missing (see the report)", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
