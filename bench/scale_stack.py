"""What every phase of bench/scale.py starts and reads: a fresh broker, VictoriaMetrics and
gateway, the fleet generator (bench/scale_gen.py), and the figures read from them.

VictoriaMetrics runs with -search.maxUniqueTimeseries raised: at 100,000 devices x 20 metrics
one query may select 2 million series (its default limit is 300,000). Sample counts are still
read one metric name at a time (100,000 series each) to keep each query small.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import procstat
from loadgen import metric_name, sample_value
from scale_gen import frames_per_device
from throughput import BenchError, Child

from devstack import GatewayProcess, Mosquitto, VictoriaMetrics, wait_for

T = TypeVar("T")
BENCH_DIR = Path(__file__).resolve().parent
VM_ARGS = ("-search.maxUniqueTimeseries=5000000", "-search.maxQueryDuration=300s")
BENCH_SELECTOR = 'device_id=~"bench-.*"'
# The newest sample of the generator's devices whose id ends in 0 (a tenth of the fleet, one
# every devices / 10 / rate seconds): the age of the newest data at the receiver.
HEAD_QUERY = 'max(tlast_over_time(bench_m00{device_id=~"bench-.*0"}[30s]))'


def vm_rss_mb(pid: int) -> float:
    """VmRSS now (procstat.peak_rss_mb is the high-water mark)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


@dataclass
class Stack:
    """Broker, receiver, gateway and generator of one phase, with their PIDs."""

    mosq: Mosquitto
    vm: VictoriaMetrics
    gw: GatewayProcess
    gen: Child
    devices: int
    samples: int
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    @property
    def pids(self) -> dict[str, int]:
        assert self.gw.pid and self.mosq.pid and self.vm.pid
        return {"gw": self.gw.pid, "broker": self.mosq.pid, "vm": self.vm.pid,
                "gen": self.gen.pid}

    def cpu(self) -> dict[str, float]:
        return {name: procstat.cpu(pid).seconds for name, pid in self.pids.items()}

    def ask(self, command: str, event: str, timeout: float) -> dict[str, Any]:
        self.gen.send(command)
        return self.gen.expect_event(event, timeout)

    def stored(self) -> float:
        """Frames committed so far (births, telemetry, marker frames), from /api/v1/pipeline:
        /metrics is 37 MB at 100,000 devices (per-device series), too dear to poll."""
        return float(self.gw.pipeline()["committed_upto"])

    def scrape(self, *names: str) -> dict[str, float]:
        """Values of exact series lines (e.g. 'x_total' or 'x_total{event="late"}') from one
        /metrics fetch, read by prefix: the text parser takes seconds on 600,000 lines."""
        wanted = {name + " ": name for name in names}
        found = dict.fromkeys(names, 0.0)
        for line in self.gw.http.get("/metrics", timeout=60).raise_for_status().text.splitlines():
            head = line[:line.find(" ") + 1]
            if head in wanted:
                found[wanted[head]] = float(line[len(head):])
        return found

    def stored_patiently(self, timeout: float = 120.0) -> float:
        """stored(), asked again while the busy gateway's API times out."""
        deadline = time.monotonic() + timeout
        while (found := patient(self.stored)) is None:
            if time.monotonic() > deadline:
                raise BenchError(f"the gateway's /metrics did not answer for {timeout:.0f} s")
        return found

    def await_stored(self, frames: float, timeout: float, what: str) -> None:
        """Until the gateway has stored `frames` and every endpoint has forwarded all (an API
        call timing out on the busy gateway is a "not yet")."""
        wait_for(lambda: bool(patient(lambda: self.stored() >= frames and self.gw.caught_up())),
                 timeout, 0.2, f"{what}: gateway did not store {frames:,.0f} frames and "
                 f"forward them within {timeout:.0f} s; log tail:\n{self.gw.log_tail()}")


def patient(call: Callable[[], T]) -> T | None:
    """call(), or None when the busy gateway (or VM) did not answer within the client's
    timeout: one slow poll is a figure to note, not the end of a phase."""
    try:
        return call()
    except httpx.TimeoutException:
        return None


@contextlib.contextmanager
def stack(workdir: Path, devices: int, samples: int, interval_ms: int,
          settings: dict[str, str], connections: int = 4,
          gateway_env: AbstractContextManager[None] | None = None) -> Iterator[Stack]:
    """A fresh Mosquitto, VictoriaMetrics, gateway (fresh data dir) and generator;
    `gateway_env` is entered around the gateway's start only (os.environ it inherits)."""
    with contextlib.ExitStack() as stack:
        mosq = stack.enter_context(Mosquitto(workdir / "mosquitto"))
        vm = stack.enter_context(VictoriaMetrics(workdir / "vm", extra_args=VM_ARGS))
        gw = GatewayProcess(workdir / "gateway", mqtt_url=mosq.url, settings=settings,
                            remote_write_urls=[vm.remote_write_url])
        with gateway_env or contextlib.nullcontext():
            stack.enter_context(gw)
        gen = Child("generator", [
            sys.executable, str(BENCH_DIR / "scale_gen.py"), "--mqtt", mosq.url,
            "--devices", str(devices), "--samples", str(samples),
            "--interval-ms", str(interval_ms), "--connections", str(connections)], workdir)
        stack.callback(gen.stop)
        gen.expect_event("ready", 600)
        yield Stack(mosq, vm, gw, gen, devices, samples)


def count_samples(vm: VictoriaMetrics, samples: int, since_ms: int,
                  selector: str = BENCH_SELECTOR) -> float:
    """Samples of metrics bench_m00.. stored since `since_ms` (count_over_time, summed one
    metric name at a time)."""
    window = f"{int(time.time() - since_ms / 1000) + 120}s"
    total = 0.0
    for m in range(samples):
        result = vm.query(f"sum(count_over_time({metric_name(m)}{{{selector}}}[{window}]))")
        total += float(result[0]["value"][1]) if result else 0.0
    return total


def verify_fleet(stack: Stack, sent: int, settle_s: float = 60.0) -> dict[str, Any]:
    """Does VM hold each of the `sent` round-robin frames' samples exactly once, with the
    values the templates carry? A short count is read again for up to settle_s."""
    expected = sent * stack.samples
    deadline = time.monotonic() + settle_s
    found = count_samples(stack.vm, stack.samples, stack.started_ms)
    while found != expected and time.monotonic() < deadline:
        time.sleep(1.0)
        found = count_samples(stack.vm, stack.samples, stack.started_ms)
    window = f"{int(time.time() - stack.started_ms / 1000) + 120}s"
    result = stack.vm.query(f"sum(sum_over_time({metric_name(0)}{{{BENCH_SELECTOR}}}"
                            f"[{window}]))")
    m00_sum = float(result[0]["value"][1]) if result else 0.0
    per_device = frames_per_device(sent, stack.devices)
    expected_sum = math.fsum(n * sample_value(d, 0, 0) for d, n in enumerate(per_device))
    counts = stack.scrape("fleetgate_frames_duplicate_total", "fleetgate_frames_invalid_total",
                          "fleetgate_forward_dead_letters_total")
    return {"expected_samples": expected, "vm_samples": found,
            "lost_samples": expected - found,
            "values_ok": math.isclose(m00_sum, expected_sum, rel_tol=1e-9),
            "duplicates": counts["fleetgate_frames_duplicate_total"],
            "invalid": counts["fleetgate_frames_invalid_total"],
            "dead_letters": counts["fleetgate_forward_dead_letters_total"]}


def mqtt_health(stack: Stack) -> dict[str, Any]:
    """How often the broker dropped the gateway for a missed keepalive (a gateway blocked for
    1.5 x keepalive), and frames received twice (redelivered after the reconnect)."""
    log = stack.mosq.log_path.read_text(errors="replace")
    return {"keepalive_drops": sum(1 for line in log.splitlines()
                                   if "fleetgate" in line and "exceeded timeout" in line),
            "duplicates": stack.scrape("fleetgate_frames_duplicate_total")[
                "fleetgate_frames_duplicate_total"]}


def delivered(stack: Stack, frames: float, timeout: float, what: str,
              problems: list[str]) -> None:
    """await_stored, a timeout noted in `problems` (the figures so far still count)."""
    try:
        stack.await_stored(frames, timeout, what)
    except (TimeoutError, BenchError) as exc:
        problems.append(str(exc).split("; log tail")[0])


def newest_head(vm: VictoriaMetrics, query: str = HEAD_QUERY) -> float | None:
    """The newest timestamp (s) the query finds in VM (None: none within its window)."""
    result = vm.query(query)
    return float(result[0]["value"][1]) if result else None


def check_fleet(stack: Stack) -> None:
    """Fail early when the gateway refused what it was sent."""
    invalid = stack.scrape("fleetgate_frames_invalid_total")["fleetgate_frames_invalid_total"]
    if invalid:
        raise BenchError(f"the gateway refused {invalid:,.0f} frames as invalid; log tail:\n"
                         f"{stack.gw.log_tail()}")
