"""Issue 15's measuring instrument: the gateway at 1,000 to 100,000 devices, in one run.

Phases (each with fresh Mosquitto, VictoriaMetrics and gateway, default settings):
  cpu      gateway CPU per 20-sample frame at each fleet size (default 1,000 x 60, 10,000 x 12,
           100,000 x 3 frames per device), births / first frame of the boot / later frames
           apart, sizes interleaved in each of --repeat repeats (bench/scale_phases.py);
  memory   RSS with N devices known at each size (from the cpu runs) -> bytes per device and
           per series (least-squares slope); and the gateway's Python heap per device by
           tracemalloc, one traced gateway per size (bench/scale_memory.py);
  sustain  100,000 devices at a 10 s cadence (10,000 frames/s) for --sustain-s (600) with the
           lifecycle on: rate reached, CPU shares, RSS, age of the newest data at VM, every
           sample delivered once (bench/scale_phases.py);
  dark     100,000 devices online, 1,000 live devices at 1 frame/s; the 100,000 die within
           --dark-spread-s (or fall silent: --dark-timeout): live lateness, time until every
           device is offline and every stale marker forwarded, RSS (bench/scale_dark.py);
  drain    a backlog drained by the gateway and by vmagent in the same run, with live
           lateness (bench/drain.py's functions; default its 1,000 x 300 frames).
The fleet is bench/scale_gen.py: each device's frame encoded once, seq and time patched per
send, QoS 1 over a few raw sockets. A phase that fails is reported as FAILED (stdout, stderr
and the "scale" section of RESULTS.md); the others still run. Exit code 1 if any failed or a
sample was lost.

    .venv/bin/python bench/scale.py [--quick] [--only cpu,sustain,dark,drain,memory]
                                    [--repeat N] [--workdir DIR] [--results FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import drain
import procstat
import results_file
import scale_dark
import scale_memory
import scale_phases
import scale_report
import stats
import vmagent_peer
from loadgen import Workload
from throughput import parse_setting, parse_workload

BENCH_DIR = Path(__file__).resolve().parent
PHASES = ("cpu", "memory", "sustain", "dark", "drain")
SECTION = "scale"
FULL = {"cpu": ["1000x60", "10000x12", "100000x3"], "tracemalloc": "1000,10000,20000",
        "sustain_devices": 100_000,
        "sustain_s": 600.0, "dark_devices": 100_000, "dark_spread_s": 60.0,
        "drain": "1000x300"}
QUICK = {"cpu": ["1000x20", "10000x6", "30000x3"], "tracemalloc": "1000,5000",
         "sustain_devices": 30_000,
         "sustain_s": 60.0, "dark_devices": 30_000, "dark_spread_s": 20.0, "drain": "1000x100"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="small: 1k/10k/30k devices, 60 s sustain, 30k going dark, 1k x 100 "
                    "backlog (development, smoke runs; ~20 min)")
    ap.add_argument("--only", default=",".join(PHASES),
                    help=f"phases to run, comma-separated (default all: {','.join(PHASES)})")
    ap.add_argument("--repeat", type=int, default=1, help="repeats of the cpu phase")
    ap.add_argument("--cpu-workload", action="append", type=parse_workload, default=[],
                    metavar="DEVICESxFRAMES", help="a fleet size of the cpu phase and frames "
                    f"per device; repeat the flag (default {' '.join(FULL['cpu'])})")
    ap.add_argument("--no-tracemalloc", action="store_true",
                    help="memory: only the RSS slope of the cpu runs, no traced gateway runs")
    ap.add_argument("--tracemalloc-devices", default=None, metavar="N,N,...",
                    help="fleet sizes of the traced runs (tracemalloc makes the gateway several "
                    f"times slower; default {FULL['tracemalloc']})")
    ap.add_argument("--sustain-devices", type=int, default=None)
    ap.add_argument("--sustain-s", type=float, default=None)
    ap.add_argument("--dark-devices", type=int, default=None)
    ap.add_argument("--dark-spread-s", type=float, default=None,
                    help="the deaths are spread over this many seconds")
    ap.add_argument("--dark-timeout", action="store_true",
                    help="the dark fleet falls silent instead (offline by timeout)")
    ap.add_argument("--dark-max-s", type=float, default=420.0,
                    help="most seconds for every device offline and every marker forwarded")
    ap.add_argument("--live-devices", type=int, default=1000)
    ap.add_argument("--live-rate-per-device", type=float, default=1.0,
                    help="frames/s of each live device (dark phase)")
    ap.add_argument("--drain-workload", type=parse_workload, default=None,
                    metavar="DEVICESxFRAMES", help=f"backlog (default {FULL['drain']})")
    ap.add_argument("--samples", type=int, default=20, help="samples per frame")
    ap.add_argument("--gateway-setting", action="append", type=parse_setting, default=[],
                    metavar="KEY=VALUE", help="passed to every gateway as FLEETGATE_KEY=VALUE")
    ap.add_argument("--timeout", type=float, default=900, help="per step, seconds")
    ap.add_argument("--results", type=Path, default=BENCH_DIR / "RESULTS.md")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep service dirs and logs here (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    preset = QUICK if args.quick else FULL
    args.phases = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        ap.error(f"--only: unknown phase(s) {', '.join(sorted(unknown))}; known: "
                 f"{', '.join(PHASES)}")
    args.cpu_workloads = args.cpu_workload or [parse_workload(w) for w in preset["cpu"]]
    for name in ("sustain_devices", "sustain_s", "dark_devices", "dark_spread_s"):
        if getattr(args, name) is None:
            setattr(args, name, preset[name])
    args.tracemalloc_sizes = sorted({int(n) for n in (
        args.tracemalloc_devices or str(preset["tracemalloc"])).split(",") if n.strip()})
    args.drain_workload = args.drain_workload or parse_workload(str(preset["drain"]))
    args.gateway_settings = dict(args.gateway_setting)
    return args


def run_drain(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    devices, frames = args.drain_workload
    dargs = argparse.Namespace(devices=devices, frames=frames, samples=args.samples,
                               connections=4, live_devices=1000, live_rate=1000.0,
                               timeout=args.timeout, gateway_settings=args.gateway_settings)
    workload = Workload.ending_in_past(devices, frames, args.samples)
    bodies = vmagent_peer.build_requests(workload)
    agent = vmagent_peer.run_drain(workload, bodies, workdir / "vmagent")
    del bodies
    gw = drain.run_gateway(dargs, workdir / "gateway")
    return {"workload": f"{devices:,} devices x {frames} frames x {args.samples} samples",
            "vmagent": agent, "gateway": gw}


class Runner:
    """Runs phases; a failure is recorded (and shouted), never the end of the run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.failures: dict[str, str] = {}

    def attempt(self, phase: str, what: str, fn: Any, *fn_args: Any) -> Any:
        print(f"[{time.strftime('%H:%M:%S')}] {what} ...", flush=True)
        began = time.monotonic()
        try:
            result = fn(*fn_args)
        except Exception as exc:
            message = f"{what}: {type(exc).__name__}: {exc}"
            self.failures[phase] = (self.failures.get(phase, "") + " " + message).strip()
            print(f"PHASE FAILED: {message}", file=sys.stderr, flush=True)
            traceback.print_exc()
            return None
        print(f"  done in {time.monotonic() - began:.0f} s", flush=True)
        return result


def run_cpu_phase(args: argparse.Namespace, runner: Runner) -> dict[int, dict[str, Any]]:
    runs: dict[int, list[dict[str, Any]]] = {d: [] for d, _ in args.cpu_workloads}
    for i in range(args.repeat):
        for devices, frames in args.cpu_workloads:
            result = runner.attempt(
                "cpu", f"cpu {devices:,} x {frames} (repeat {i + 1}/{args.repeat})",
                scale_phases.run_cpu, args, devices, frames,
                runner.root / f"cpu-{devices}-{i}")
            if result is not None:
                runs[devices].append(result)
                print(f"  births {result['birth_us_per_device']:,.0f} µs/device; first frame "
                      f"{result['first_us_per_frame']:,.0f} µs; later "
                      f"{scale_report._f(result['later_us_per_frame'])} µs; RSS "
                      f"{result['rss_mb']:,.0f} MB; lost {result['lost_samples']:,.0f}",
                      flush=True)
    return {d: stats.medians(r) for d, r in runs.items() if r}


def lost(cpu: dict[int, dict[str, Any]], phases: dict[str, Any]) -> float:
    total = sum(float(r["lost_samples"]) for r in cpu.values() if
                isinstance(r["lost_samples"], int | float))
    for name in ("sustain", "dark"):
        if name in phases:
            total += phases[name]["lost_samples"]
    if "dark" in phases:
        total += phases["dark"]["live_lost"]
    if "drain" in phases:
        total += phases["drain"]["gateway"]["lost_samples"]
    return total


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([".venv/bin/python", "bench/scale.py",
                          *(sys.argv[1:] if argv is None else argv)])
    root = args.workdir or Path(tempfile.mkdtemp(prefix="fleetgate-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    runner = Runner(root)
    load_before = os.getloadavg()[0]
    cpu: dict[int, dict[str, Any]] = {}
    phases: dict[str, Any] = {}
    try:
        if "cpu" in args.phases or "memory" in args.phases:
            cpu = run_cpu_phase(args, runner)
        for name, fn in (("memory", scale_memory.run_memory),
                         ("sustain", scale_phases.run_sustain), ("dark", scale_dark.run_dark),
                         ("drain", run_drain)):
            if name in args.phases and not (name == "memory" and args.no_tracemalloc):
                result = runner.attempt(name, name, fn, args, root / name)
                if result is not None:
                    phases[name] = result
                    print("  " + json.dumps({k: v for k, v in result.items()
                                             if not isinstance(v, list | str)}, default=str),
                          flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    load = f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    text = scale_report.markdown(command=command, machine=procstat.machine(), cpu=cpu,
                                 phases=phases, failures=runner.failures, repeats=args.repeat,
                                 samples=args.samples, settings=args.gateway_settings,
                                 load=load)
    print("\n" + text)
    results_file.write_section(args.results, SECTION, text)
    print(f"wrote section '{SECTION}' of {args.results}")
    missing = lost(cpu, phases)
    for phase, why in runner.failures.items():
        print(f"PHASE FAILED: {phase}: {why}", file=sys.stderr)
    problems = [f"{name}: {p}" for name, r in phases.items() for p in r.get("problems", [])]
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    if missing:
        print(f"CHECK FAILED: {missing:,.0f} samples lost or extra", file=sys.stderr)
    return 1 if runner.failures or missing or problems else 0


if __name__ == "__main__":
    sys.exit(main())
