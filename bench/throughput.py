"""End-to-end throughput of the gateway against a same-run baseline.

One run measures two consumers of the same fixed workload (default: 1,000 devices x 60 frames
x 20 samples, then 10,000 devices x 30 frames x 20 samples; QoS 1), each on a fresh Mosquitto
started from the shipped config. (Every device's first frame costs more: its series are new to
the gateway and the receiver. With 30 frames a device that is 1 frame in 30.)

  1. bench/bare_subscriber.py: a paho subscriber that only counts QoS 1 messages, the ceiling
     for any Python ingest;
  2. the gateway (`python -m gateway.cli run`, default settings: sqlite_synchronous=full, dedup
     always on) with a fresh data dir, forwarding to a fresh VictoriaMetrics.

bench/loadgen.py (one process, pre-encoded packets) publishes the births, then, once the
consumer has taken them, the telemetry. Consumer and broker CPU come from /proc/<pid>/stat
between the moment telemetry starts and the moment the consumer is done; peak RSS is VmHWM.
For the gateway, "done" means every frame committed and every endpoint caught up, found by
polling /api/v1/pipeline; then VictoriaMetrics is checked for every sample (count and sum).

    .venv/bin/python bench/throughput.py [--repeat 3] [--workload 1000x60 ...]
                                         [--gateway-setting KEY=VALUE ...] [--profile]

Results go to stdout and the "throughput" section of bench/RESULTS.md (results_file.py).

With `--sqlite-layers legacy,aiosqlite` it measures instead the gateway on the SQLite layer it
had before issue 12 (bench/legacy_db.py) against the shipped one, both in the same run, with
no bare subscriber; that goes to the "sqlite-layer" section (bench/layer_compare.py). With
`--gateway-trees before=/tmp/old,after=.` it measures the gateway of two source trees the same
way (bench/tree_compare.py, section "redesign-throughput"). Both alternate which variant goes
first per repeat and run a failed run once more (bench/same_run.py). With
`--mqtt-tls [plain,tls,tls-stock]` it measures the gateway connected to the broker over mqtt://
and over mqtts:// (fast path on, and off), rotating the order per repeat (bench/tls_compare.py,
section "mqtt-tls").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import layer_compare
import procstat
import profile_summary
import profiling
import report
import results_file
import same_run
import stats
import tls_compare
import tree_compare
from loadgen import metric_name, sample_value
from profiling import GatewayProfiler

from devstack import GatewayProcess, Mosquitto, VictoriaMetrics, wait_for

BENCH_DIR = Path(__file__).resolve().parent
PROFILE_FILE = "profile-gateway.txt"  # beside RESULTS.md
PROFILE_MAX_KEPT_BYTES = 200_000
POLL_INTERVAL_S = 0.1
STALL_TIMEOUT_S = 60.0
VM_SETTLE_TIMEOUT_S = 30.0
# The same 60,000 frames as 1,000 devices x 60 and as 10,000 devices x 6: what changes is the
# number of devices (series, births, per-device state), not the amount of work.
DEFAULT_WORKLOADS = ("1000x60", "10000x30")  # 10k x 30: 1 frame in 30 is a first one


class BenchError(RuntimeError):
    """The benchmark could not complete or its output did not check out."""


class Child:
    """A helper process spoken to by lines on stdin/stdout; stderr goes to a log file."""

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.stderr"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log, text=True, start_new_session=True)
        self.pid = self.proc.pid
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def expect_line(self, timeout: float) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"{self.name}: no output within {timeout:.0f} s") from None
        if line is None:
            code = self.proc.wait()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise BenchError(f"{self.name} exited (code {code}) early; stderr:\n{tail}")
        return line

    def expect_event(self, event: str, timeout: float) -> dict[str, Any]:
        message = json.loads(self.expect_line(timeout))
        if message.get("event") != event:
            raise BenchError(f"{self.name}: expected event {event!r}, got {message}")
        return dict(message)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_loadgen(args: argparse.Namespace, mqtt_url: str, workdir: Path) -> Child:
    return Child("loadgen", [
        sys.executable, str(BENCH_DIR / "loadgen.py"), "--interactive", "--mqtt", mqtt_url,
        "--devices", str(args.devices), "--frames", str(args.frames),
        "--samples", str(args.samples), "--connections", str(args.connections)], workdir)


def _loadgen_fields(done: dict[str, Any], ready: dict[str, Any]) -> dict[str, Any]:
    return {"loadgen_rate": done["rate_msg_s"], "loadgen_cpu_s": done["cpu_s"],
            "loadgen_us_per_msg": done["cpu_us_per_msg"], "loadgen_wall_s": done["wall_s"],
            "loadgen_encode_cpu_s": ready["encode_cpu_s"]}


# ---------------------------------------------------------------------------- bare subscriber
def run_bare(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    n = args.devices * args.frames
    with Mosquitto(workdir / "mosquitto") as mosq:
        assert mosq.pid is not None
        bare = Child("bare-subscriber", [
            sys.executable, str(BENCH_DIR / "bare_subscriber.py"), "--mqtt", mosq.url,
            "--count", str(n), "--linger"], workdir)
        loadgen = start_loadgen(args, mosq.url, workdir)
        try:
            if (line := bare.expect_line(30)) != "ready":
                raise BenchError(f"bare subscriber: expected 'ready', got {line!r}")
            ready = loadgen.expect_event("ready", 300)
            loadgen.send("births")  # the bare subscriber does not subscribe to them
            loadgen.expect_event("births_acked", 60)
            consumer0, broker0 = procstat.cpu(bare.pid), procstat.cpu(mosq.pid)
            steal0 = procstat.steal_seconds()
            loadgen.send("telemetry")
            result = json.loads(bare.expect_line(args.timeout))
            if "error" in result:
                raise BenchError(f"bare subscriber: {result['error']}")
            consumer_cpu = procstat.cpu_since(consumer0)
            broker_cpu = procstat.cpu_since(broker0)
            steal = procstat.steal_seconds() - steal0
            rss = procstat.peak_rss_mb(bare.pid)
            done = loadgen.expect_event("done", args.timeout)
        finally:
            loadgen.stop()
            bare.stop()
    e2e = result["last_epoch"] - done["first_publish_epoch"]
    return {"messages": n, "e2e_s": e2e, "frames_per_s": n / e2e,
            "samples_per_s": n * args.samples / e2e, "cpu_s": consumer_cpu,
            "cpu_us_per_frame": consumer_cpu / n * 1e6, "rss_mb": rss,
            "broker_cpu_s": broker_cpu, "broker_us_per_msg": broker_cpu / n * 1e6,
            "own_cpu_s": result["cpu_s"], "steal_s": steal, **_loadgen_fields(done, ready)}


# ---------------------------------------------------------------------------- gateway
def run_gateway(args: argparse.Namespace, workdir: Path,
                profiler: GatewayProfiler | None = None,
                variant: same_run.Variant | None = None,
                transport: tuple[tls_compare.Transport, tls_compare.BrokerPki] | None = None
                ) -> dict[str, Any]:
    """One gateway run; `variant` (bench/same_run.py) if given, else the plain gateway;
    `transport`: its connection to the broker (bench/tls_compare.py), else mqtt://."""
    n = args.devices * args.frames
    with contextlib.ExitStack() as stack:
        mosq = stack.enter_context(Mosquitto(workdir / "mosquitto") if transport is None
                                   else tls_compare.TlsMosquitto(workdir / "mosquitto",
                                                                 transport[1]))
        vm = stack.enter_context(VictoriaMetrics(workdir / "vm"))
        mqtt_url, settings = mosq.url, args.gateway_settings
        if transport is not None:
            mqtt_url, extra = tls_compare.gateway_connection(transport[0], mosq, transport[1])
            settings = {**settings, **extra}
        options: dict[str, Any] = dict(mqtt_url=mqtt_url, settings=settings,
                                       remote_write_urls=[vm.remote_write_url])
        gw = (GatewayProcess(workdir / "gateway", **options) if variant is None else
              variant.gateway(workdir / "gateway", **options))
        # Started inside: the GC probe (PYTHONPATH) reaches the gateway only.
        with profiler.environment() if profiler else contextlib.nullcontext():
            stack.enter_context(gw)
        assert mosq.pid is not None and vm.pid is not None and gw.pid is not None
        loadgen = start_loadgen(args, mosq.url, workdir)
        try:
            ready = loadgen.expect_event("ready", 300)
            loadgen.send("births")
            loadgen.expect_event("births_acked", 60)
            wait_for(lambda: gw.metric("fleetgate_frames_stored_total") >= args.devices
                     and gw.caught_up(), 120, 0.1, "gateway did not store and forward births")
            births_upto = int(gw.pipeline()["committed_upto"])
            poll_cpu_s = _poll_cost(gw)
            before = {name: procstat.cpu(pid) for name, pid in
                      (("gw", gw.pid), ("broker", mosq.pid), ("vm", vm.pid))}
            if profiler is not None:
                profiler.start(gw.pid)
            steal0 = procstat.steal_seconds()
            loadgen.send("telemetry")
            progress = _await_gateway(gw, births_upto + n)
            used = {name: procstat.cpu_since(sample) for name, sample in before.items()}
            steal = procstat.steal_seconds() - steal0
            if profiler is not None:
                profiler.stop()
            rss = procstat.peak_rss_mb(gw.pid)
            done = loadgen.expect_event("done", args.timeout)
        finally:
            loadgen.stop()
        check = _verify(args, gw, vm, int(ready["base_ms"]))
    e2e = progress["forwarded_epoch"] - done["first_publish_epoch"]
    return {"messages": n, "e2e_s": e2e,
            "stored_s": progress["stored_epoch"] - done["first_publish_epoch"],
            "frames_per_s": n / e2e, "samples_per_s": n * args.samples / e2e,
            "cpu_s": used["gw"], "cpu_us_per_frame": used["gw"] / n * 1e6, "rss_mb": rss,
            "broker_cpu_s": used["broker"], "broker_us_per_msg": used["broker"] / n * 1e6,
            "vm_cpu_s": used["vm"], "polls": progress["polls"],
            "max_forward_lag": progress["max_forward_lag"], "steal_s": steal,
            "poll_cpu_ms": poll_cpu_s * 1000, **_loadgen_fields(done, ready), **check,
            **same_run.provenance(gw)}


def _poll_cost(gw: GatewayProcess, polls: int = 50) -> float:
    """CPU the gateway spends answering one /api/v1/pipeline poll (measured while idle)."""
    assert gw.pid is not None
    before = procstat.cpu(gw.pid)
    for _ in range(polls):
        gw.pipeline()
    return procstat.cpu_since(before) / polls


def _await_gateway(gw: GatewayProcess, target: int) -> dict[str, Any]:
    """Poll until frame `target` is committed and every endpoint's cursor has reached it."""
    stored_epoch: float | None = None
    polls = 0
    max_lag = 0  # frames committed but not yet taken by the slowest endpoint
    last_change = time.monotonic()
    last_state: tuple[int, ...] = ()
    while True:
        time.sleep(POLL_INTERVAL_S)
        state = gw.pipeline()
        now = time.time()
        polls += 1
        committed = int(state["committed_upto"])
        cursors = [int(e["cursor"]) for e in state["endpoints"]]
        max_lag = max(max_lag, committed - min(cursors, default=committed))
        if stored_epoch is None and committed >= target:
            stored_epoch = now
        if committed >= target and all(c >= committed for c in cursors):
            assert stored_epoch is not None
            return {"stored_epoch": stored_epoch, "forwarded_epoch": now, "polls": polls,
                    "max_forward_lag": max_lag}
        if (committed, *cursors) != last_state:
            last_state = (committed, *cursors)
            last_change = time.monotonic()
        elif time.monotonic() - last_change > STALL_TIMEOUT_S:
            raise BenchError(
                f"gateway made no progress for {STALL_TIMEOUT_S:.0f} s: committed up to frame "
                f"{committed} of {target}, pipeline {json.dumps(state)}; invalid frames "
                f"{gw.metric('fleetgate_frames_invalid_total')}, duplicates "
                f"{gw.metric('fleetgate_frames_duplicate_total')}; log tail:\n{gw.log_tail()}")


def _verify(args: argparse.Namespace, gw: GatewayProcess, vm: VictoriaMetrics,
            base_ms: int) -> dict[str, Any]:
    """What the gateway says it did, and what VictoriaMetrics actually holds."""
    expected_samples = args.devices * args.frames * args.samples
    window = f"{int(time.time() - base_ms / 1000) + 120}s"  # reaches back past seq 0
    selector = '{__name__=~"bench_m[0-9]+"}'

    def scalar(promql: str) -> float:
        result = vm.query(promql)
        return float(result[0]["value"][1]) if result else 0.0

    def count(selector: str) -> float:
        return scalar(f"sum(count_over_time({selector}[{window}]))")

    # A short count is read again: VictoriaMetrics has been seen to return a short answer right
    # after force_flush that completes within seconds. What is still short after
    # VM_SETTLE_TIMEOUT_S is reported as lost.
    began = time.monotonic()
    first_read = stored_samples = count(selector)
    while (stored_samples != expected_samples
           and time.monotonic() - began < VM_SETTLE_TIMEOUT_S):
        time.sleep(0.5)
        stored_samples = count(selector)
    settle_s = time.monotonic() - began if first_read != expected_samples else 0.0
    short = {}
    if stored_samples != expected_samples:
        per_metric = args.devices * args.frames
        short = {name: int(n) for name in map(metric_name, range(args.samples))
                 if (n := count(name)) != per_metric}
    series = scalar(f"count(count_over_time({selector}[{window}]))")
    m00_sum = scalar(f"sum(sum_over_time({metric_name(0)}[{window}]))")
    expected_sum = math.fsum(sample_value(d, s, 0)
                             for d in range(args.devices) for s in range(args.frames))
    commit_count = gw.metric("fleetgate_commit_batch_messages_count")
    commit_s = gw.metric("fleetgate_commit_duration_seconds_sum")
    requests = gw.metric("fleetgate_forward_requests_total")
    return {
        "frames_stored": gw.metric("fleetgate_frames_stored_total"),
        "expected_frames_stored": args.devices * (args.frames + 1),
        "duplicates": gw.metric("fleetgate_frames_duplicate_total"),
        "invalid": gw.metric("fleetgate_frames_invalid_total"),
        "dead_letters": gw.metric("fleetgate_forward_dead_letters_total"),
        "vm_samples": stored_samples, "expected_samples": expected_samples,
        "vm_first_read_samples": first_read, "vm_settle_s": settle_s,
        "short_metrics": json.dumps(short),
        "lost_samples": expected_samples - stored_samples,
        "vm_series": series, "expected_series": args.devices * args.samples,
        "values_ok": math.isclose(m00_sum, expected_sum, rel_tol=1e-9),
        "commits": commit_count,
        "frames_per_commit": gw.metric("fleetgate_commit_batch_messages_sum") / commit_count,
        "commit_ms_avg": commit_s / commit_count * 1000, "forward_requests": requests,
    }


# ---------------------------------------------------------------------------- main
def parse_setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. "
                                         "sqlite_synchronous=normal")
    return key.strip().lower(), value.strip()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", action="append", type=parse_workload, default=[],
                    metavar="DEVICESxFRAMES",
                    help="devices (one birth each) x telemetry frames per device; repeat the "
                    "flag for several workloads, run interleaved in each repeat (default: "
                    f"{' and '.join(DEFAULT_WORKLOADS)}: the same number of frames)")
    ap.add_argument("--samples", type=int, default=20, help="samples per frame")
    ap.add_argument("--connections", type=int, default=4, help="load generator connections")
    ap.add_argument("--repeat", type=int, default=1, help="run the pair N times; report medians")
    ap.add_argument("--gateway-setting", action="append", type=parse_setting, default=[],
                    metavar="KEY=VALUE", help="passed to the gateway as FLEETGATE_KEY=VALUE")
    ap.add_argument("--profile", action="store_true",
                    help="one more gateway run under py-spy; its summary goes to RESULTS.md")
    ap.add_argument("--timeout", type=float, default=600, help="per phase, seconds")
    ap.add_argument("--results", type=Path, default=BENCH_DIR / "RESULTS.md",
                    help="report to write (its notes section is kept); default %(default)s")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep service dirs and logs here (default: a temp dir, removed)")
    compare = ap.add_mutually_exclusive_group()
    compare.add_argument("--sqlite-layers", type=layer_compare.parse_layers, default=None,
                         metavar="legacy,aiosqlite",
                         help="instead: the gateway on the old SQLite layer and on the shipped "
                         "one, alternating, in each repeat (section 'sqlite-layer')")
    compare.add_argument("--gateway-trees", type=tree_compare.parse_trees, default=None,
                         metavar="NAME=PATH,NAME=PATH",
                         help="instead: the gateway imported from each source tree (the first "
                         "is the baseline), alternating, in each repeat (section "
                         "'redesign-throughput'), e.g. before=/tmp/old,after=.")
    compare.add_argument("--mqtt-tls", type=tls_compare.parse_transports, nargs="?",
                         const=tls_compare.parse_transports(tls_compare.DEFAULT_TRANSPORTS),
                         default=None, metavar="plain,tls,tls-stock[,plain-stock]",
                         help="instead: the gateway over mqtt:// and mqtts:// (fast path on, "
                         "off), rotating, in each repeat (section 'mqtt-tls'); default "
                         f"{tls_compare.DEFAULT_TRANSPORTS}")
    args = ap.parse_args(argv)
    args.gateway_settings = dict(args.gateway_setting)
    args.workloads = args.workload or [parse_workload(w) for w in DEFAULT_WORKLOADS]
    return args


def parse_workload(text: str) -> tuple[int, int]:
    devices, sep, frames = text.lower().replace(",", "").replace("_", "").partition("x")
    try:
        parsed = int(devices), int(frames)
    except ValueError:
        parsed = (0, 0)
    if not sep or min(parsed) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected DEVICESxFRAMES, e.g. 1000x60")
    return parsed


def for_workload(args: argparse.Namespace, devices: int, frames: int) -> argparse.Namespace:
    """args with one workload's devices and frames, as run_bare/run_gateway read them."""
    return argparse.Namespace(**{**vars(args), "devices": devices, "frames": frames})


def compare(args: argparse.Namespace, command: str, root: Path,
            workloads: list[argparse.Namespace]) -> int:
    """The gateway in each variant (SQLite layer or source tree), alternating, per workload
    and repeat; the section of the comparison in RESULTS.md."""
    comparison: same_run.Comparison = args.sqlite_layers or args.gateway_trees
    names = [f"{wl.devices}x{wl.frames}" for wl in workloads]
    by_name = dict(zip(names, workloads, strict=True))

    def run(i: int, name: str, variant: same_run.Variant, attempt: int) -> dict[str, Any]:
        return run_gateway(by_name[name], root / f"run{i}-{name}-{variant.name}-{attempt}",
                           variant=variant)

    def on_pair(name: str, runs: same_run.Runs) -> None:
        print(same_run.console_line(comparison, name, runs, layer_compare.CPU), flush=True)

    results = same_run.measure(comparison, args.repeat, names, run, on_pair,
                               remove=None if args.workdir else root)
    if results is None:
        return 2
    machine = procstat.machine()
    if args.sqlite_layers:
        section = layer_compare.SECTION
        text = layer_compare.markdown(args=args, command=command, machine=machine,
                                      workloads=workloads, results=results)
    else:
        section = tree_compare.THROUGHPUT_SECTION
        text = tree_compare.throughput_markdown(
            comparison=comparison, command=command, machine=machine, repeat=args.repeat,
            titles=[f"{wl.devices:,} devices x {wl.frames} frames x {wl.samples} samples"
                    for wl in workloads], results=results, check=report.problems)
    return same_run.report(args.results, section, text, [
        p for runs in results for p in same_run.problems(runs, report.problems)])


def compare_tls(args: argparse.Namespace, command: str, root: Path,
                workloads: list[argparse.Namespace]) -> int:
    """The gateway over each transport (mqtt://, mqtts://, fast path on/off) per workload and
    repeat, rotating; the "mqtt-tls" section of RESULTS.md."""
    transports: tuple[tls_compare.Transport, ...] = args.mqtt_tls
    names = [f"{wl.devices}x{wl.frames}" for wl in workloads]
    by_name = dict(zip(names, workloads, strict=True))
    load_before = os.getloadavg()
    try:
        pki = tls_compare.issue_pki(root / "pki")
        tls = tls_compare.negotiated(pki, root / "tls-probe")

        def run(i: int, name: str, transport: tls_compare.Transport,
                attempt: int) -> dict[str, Any]:
            return run_gateway(by_name[name], root / f"run{i}-{name}-{transport.name}-{attempt}",
                               variant=same_run.Variant(transport.name),
                               transport=(transport, pki))

        results = tls_compare.alternate(transports, args.repeat, names, run)
    except same_run.FAILURES as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    load_after = os.getloadavg()
    load = f"load average {load_before[0]:.1f} at the start, {load_after[0]:.1f} at the end"
    text = tls_compare.markdown(
        transports=transports, command=command, machine=procstat.machine(),
        repeat=args.repeat, titles=[f"{wl.devices:,} devices x {wl.frames} frames x "
                                    f"{wl.samples} samples" for wl in workloads],
        results=results, tls=tls, check=report.problems, load=load)
    return same_run.report(args.results, tls_compare.SECTION, text, [
        f"{name} run {i}: {p}" for runs in results for name, rs in runs.items()
        for i, r in enumerate(rs, 1) for p in report.problems(r)])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([".venv/bin/python", "bench/throughput.py",
                          *(sys.argv[1:] if argv is None else argv)])
    root = args.workdir or Path(tempfile.mkdtemp(prefix="fleetgate-bench-"))
    workloads = [for_workload(args, d, f) for d, f in args.workloads]
    if args.sqlite_layers or args.gateway_trees:
        return compare(args, command, root, workloads)
    if args.mqtt_tls:
        return compare_tls(args, command, root, workloads)
    bare_runs: list[list[dict[str, Any]]] = [[] for _ in workloads]
    gw_runs: list[list[dict[str, Any]]] = [[] for _ in workloads]
    profile: str | None = None
    kept_profile: str | None = None
    try:
        for i in range(args.repeat):
            for w, wl in enumerate(workloads):
                name = f"{wl.devices}x{wl.frames}"
                print(f"run {i + 1}/{args.repeat}, {name}: bare subscriber ...", flush=True)
                bare_runs[w].append(run_bare(wl, root / f"run{i}-{name}-bare"))
                print(f"run {i + 1}/{args.repeat}, {name}: gateway ...", flush=True)
                gw_runs[w].append(run_gateway(wl, root / f"run{i}-{name}-gateway"))
                print(report.run_line(bare_runs[w][-1], gw_runs[w][-1]), flush=True)
        if args.profile:
            print("profiling the gateway (an extra run under py-spy) ...", flush=True)
            profiler = GatewayProfiler(root / "profile")
            profiled = run_gateway(workloads[0], root / "profile-gateway", profiler)
            profile = (profiling.gc_markdown(profiler.gc_time(), profiled["cpu_s"]) + "\n\n"
                       + profile_summary.markdown(profile_summary.load(profiler.raw)))
            compacted = profile_summary.compact(profiler.raw)
            kept = args.results.parent / PROFILE_FILE
            kept.unlink(missing_ok=True)  # never leave a stale profile beside new results
            if len(compacted) <= PROFILE_MAX_KEPT_BYTES:
                kept.write_text(compacted)
                kept_profile = kept.name
    except (BenchError, profiling.ProfilerError, TimeoutError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    results = [report.WorkloadResult(wl, stats.medians(b), stats.medians(g), b, g)
               for wl, b, g in zip(workloads, bare_runs, gw_runs, strict=True)]
    text = report.markdown(args=args, command=command, machine=procstat.machine(),
                           results=results, profile=profile, profile_file=kept_profile)
    problems = []
    for result in results:
        print(f"{result.title}:")
        print(report.table(result.bare, result.gw, result.args))
        problems += [f"{result.title}: {p}" for p in report.problems(result.gw)]
    results_file.write_section(args.results, "throughput", text)
    print(f"wrote section 'throughput' of {args.results}")
    for problem in problems:
        print(f"CHECK FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
