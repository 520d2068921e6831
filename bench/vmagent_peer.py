"""The peer for the store-and-forward stage: vmagent forwarding the gateway's samples to VM.

vmagent (shipped in Debian's victoria-metrics package) accepts Prometheus remote write and
forwards it through its on-disk queue (-remoteWrite.tmpDataPath), which is the job of the
gateway's SQLite buffer + forwarder. It is fed exactly the requests the gateway sends for the
same workload: the same series ({__name__="bench_mNN", device_id="bench-NNNNN"}, encoded by
gateway.remote_write.series.SeriesEncoder), one entry per sample, 20,000 samples per request (the
gateway's remote_write_max_samples default), frames in the order the load generator publishes
them, snappy-compressed by gateway.remote_write.wire.compress. Bodies are built before timing.

Two measurements, each into a fresh VictoriaMetrics:
  (a) forward: VM up; every request posted to vmagent back to back; time until VM has counted
      every sample (its vm_rows_inserted_total{type="promremotewrite"}); vmagent CPU.
  (b) drain: VM down (its port reserved), every request posted (vmagent answers 204 once a
      block is queued), then VM started on the same port; time from VM's first inserted row
      to the last, and from VM ready to the last (which adds vmagent's retry back-off).
Both then check VM holds every sample once (count_over_time over the whole window).

    .venv/bin/python bench/vmagent_peer.py [--repeat 3]     # its own "vmagent" section
bench/drain.py runs (b) as the baseline beside each gateway drain.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import procstat
import results_file
import stats
from loadgen import Workload, device_id, metric_name, sample_value
from prometheus_client.parser import text_string_to_metric_families

from devstack import LOOPBACK, HttpService, VictoriaMetrics, wait_for
from gateway.remote_write.series import SeriesEncoder
from gateway.remote_write.wire import (
    PROTOCOL_HEADERS,
    SAMPLE_HEAD,
    SAMPLE_TIMESTAMP_TAG,
    SAMPLE_VALUE_TAG,
    compress,
    encode_varint,
)

BENCH_DIR = Path(__file__).resolve().parent
MAX_SAMPLES_PER_REQUEST = 20_000  # gateway default remote_write_max_samples
POLL_S = 0.1
HEADERS = PROTOCOL_HEADERS


class VMAgent(HttpService):
    name = "vmagent"
    binary_names: tuple[str, ...] = ("/usr/bin/vmagent", "vmagent")
    ready_path = "/health"

    def __init__(self, workdir: Path | str, remote_write_url: str,
                 port: int | None = None) -> None:
        super().__init__(workdir, port)
        self.target = remote_write_url
        self.queue_dir = self.workdir / "queue"

    def _command(self, binary: str) -> list[str]:
        return [binary, f"-remoteWrite.url={self.target}",
                f"-remoteWrite.tmpDataPath={self.queue_dir}",
                f"-httpListenAddr={LOOPBACK}:{self.port}", "-loggerLevel=WARN"]


def metric(service: HttpService, name: str, **labels: str) -> float:
    """Sum of a metric's samples matching labels, from the service's /metrics."""
    total = 0.0
    text = service.http.get("/metrics").raise_for_status().text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def vm_rows(vm: VictoriaMetrics) -> float:
    """Samples VictoriaMetrics has taken in through remote write so far."""
    return metric(vm, "vm_rows_inserted_total", type="promremotewrite")


def build_requests(workload: Workload,
                   max_samples: int = MAX_SAMPLES_PER_REQUEST) -> list[bytes]:
    """Compressed remote-write bodies carrying the workload's telemetry as the gateway
    would: seq by seq, device by device, one entry per sample."""
    encoder = SeriesEncoder()
    prefixes = [[encoder.series_prefix(device_id(d), metric_name(m), ())
                 for m in range(workload.samples)] for d in range(workload.devices)]
    pack, value_tag, ts_tag = SAMPLE_HEAD.pack, SAMPLE_VALUE_TAG, SAMPLE_TIMESTAMP_TAG
    bodies: list[bytes] = []
    batch: list[bytes] = []
    for seq in range(workload.frames):
        ts = encode_varint(workload.base_ms + seq * 1000)
        for d in range(workload.devices):
            row = prefixes[d]
            batch += [row[m] + pack(value_tag, sample_value(d, seq, m), ts_tag) + ts
                      for m in range(workload.samples)]
            if len(batch) >= max_samples:
                bodies.append(compress(b"".join(batch)))
                batch = []
    if batch:
        bodies.append(compress(b"".join(batch)))
    return bodies


def post_all(url: str, bodies: list[bytes]) -> None:
    with httpx.Client(timeout=60) as client:
        for body in bodies:
            response = client.post(url, content=body, headers=HEADERS)
            if response.status_code // 100 != 2:
                raise RuntimeError(f"{url}: {response.status_code} {response.text[:200]}")


def count_samples(vm: VictoriaMetrics, selector: str, since_ms: int, expected: int,
                  settle_s: float = 30.0) -> float:
    """Samples matching `selector` stored in VM since `since_ms`; a short answer is read
    again for up to settle_s (VM can answer short right after force_flush)."""
    window = f"{int(time.time() - since_ms / 1000) + 120}s"

    def read() -> float:
        result = vm.query(f"sum(count_over_time({selector}[{window}]))")
        return float(result[0]["value"][1]) if result else 0.0

    deadline = time.monotonic() + settle_s
    found = read()
    while found != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        found = read()
    return found


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _await_rows(vm: VictoriaMetrics, expected: float, timeout: float) -> tuple[float, float]:
    """Poll VM until it has inserted `expected` rows: (epoch of first rows seen, of all)."""
    first: float | None = None
    deadline = time.monotonic() + timeout
    while True:
        rows = vm_rows(vm)
        now = time.time()
        if first is None and rows > 0:
            first = now
        if rows >= expected:
            assert first is not None
            return first, now
        if time.monotonic() > deadline:
            raise TimeoutError(f"VictoriaMetrics inserted {rows:,.0f} of {expected:,.0f} rows "
                               f"within {timeout:.0f} s")
        time.sleep(POLL_S)


def run_forward(workload: Workload, bodies: list[bytes], workdir: Path,
                timeout: float = 600) -> dict[str, Any]:
    """(a): VM up, vmagent forwarding as the requests arrive."""
    samples = workload.total_samples
    with VictoriaMetrics(workdir / "vm") as vm, VMAgent(workdir / "vmagent",
                                                        vm.remote_write_url) as agent:
        assert vm.pid is not None and agent.pid is not None
        before = {"vmagent": procstat.cpu(agent.pid), "vm": procstat.cpu(vm.pid)}
        feeder0 = own_cpu()
        began = time.time()
        post_all(f"{agent.url}/api/v1/write", bodies)
        posted = time.time()
        feeder = own_cpu() - feeder0
        _, done = _await_rows(vm, samples, timeout)
        used = {name: procstat.cpu_since(sample) for name, sample in before.items()}
        rss = procstat.peak_rss_mb(agent.pid)
        stored = count_samples(vm, '{__name__=~"bench_m[0-9]+"}', workload.base_ms, samples)
    return {"samples": samples, "requests": len(bodies), "wall_s": done - began,
            "post_s": posted - began, "samples_per_s": samples / (done - began),
            "vmagent_cpu_s": used["vmagent"],
            "vmagent_us_per_sample": used["vmagent"] / samples * 1e6,
            "vm_cpu_s": used["vm"], "feeder_cpu_s": feeder, "vmagent_rss_mb": rss,
            "vm_samples": stored, "lost_samples": samples - stored}


def run_drain(workload: Workload, bodies: list[bytes], workdir: Path,
              timeout: float = 600) -> dict[str, Any]:
    """(b): VM down while every request is queued by vmagent, then VM up: the drain."""
    samples = workload.total_samples
    vm = VictoriaMetrics(workdir / "vm")  # port reserved, not started yet
    with contextlib.ExitStack() as stack, VMAgent(workdir / "vmagent",
                                                  vm.remote_write_url) as agent:
        assert agent.pid is not None
        fill0 = time.time()
        post_all(f"{agent.url}/api/v1/write", bodies)
        fill_s = time.time() - fill0
        # vmagent answers once the samples are in its queue: an in-memory part (lost on a
        # crash, saved on a clean stop) and, beyond that, files on disk.
        wait_for(lambda: metric(agent, "vmagent_remotewrite_rows_pushed_after_relabel_total")
                 >= samples, 60, 0.1, "vmagent did not queue every sample")
        queued_mb = metric(agent, "vmagent_remotewrite_pending_data_bytes") / 1e6
        on_disk_mb = metric(agent, "vm_persistentqueue_bytes_written_total") / 1e6
        agent_before = procstat.cpu(agent.pid)
        started = time.time()
        stack.enter_context(vm)
        ready = time.time()
        assert vm.pid is not None
        vm_before = procstat.cpu(vm.pid)
        first, done = _await_rows(vm, samples, timeout)
        agent_cpu = procstat.cpu_since(agent_before)
        vm_cpu = procstat.cpu_since(vm_before)
        stored = count_samples(vm, '{__name__=~"bench_m[0-9]+"}', workload.base_ms, samples)
    drain_s = done - first
    return {"samples": samples, "frames": workload.telemetry_messages,
            "requests": len(bodies), "fill_s": fill_s, "queued_mb": queued_mb,
            "on_disk_mb": on_disk_mb,
            "vm_start_s": ready - started, "first_delivery_s": first - ready,
            "drain_s": drain_s, "since_ready_s": done - ready,
            "frames_per_s": workload.telemetry_messages / drain_s,
            "samples_per_s": samples / drain_s, "vmagent_cpu_s": agent_cpu,
            "vmagent_us_per_sample": agent_cpu / samples * 1e6, "vm_cpu_s": vm_cpu,
            "vm_samples": stored, "lost_samples": samples - stored}


# ---------------------------------------------------------------------------- report
def markdown(command: str, machine: dict[str, str], workload: Workload,
             forward: list[dict[str, Any]], drain: list[dict[str, Any]]) -> str:
    f, d = stats.medians(forward), stats.medians(drain)
    lost = sum(r["lost_samples"] for r in forward + drain)
    out = [
        "## vmagent peer: store-and-forward reference (`bench/vmagent_peer.py`)",
        "",
        f"- Command: `{command}`",
        f"- Date: {machine['date']}; commit {machine['commit']}; {machine['cpus']} CPUs "
        f"({machine['cpu_model']}), shared by vmagent, VictoriaMetrics and the feeder",
        f"- Samples: {workload.total_samples:,} ({workload.devices:,} devices x "
        f"{workload.frames} frames x {workload.samples} samples), {f['requests']} remote-write "
        f"requests of {MAX_SAMPLES_PER_REQUEST:,} samples, exactly as the gateway encodes and "
        "batches them, built before timing; vmagent with defaults (4 queues, on-disk queue)",
        f"- Repeats: {len(forward)}" + (" (medians; forward and drain alternate)"
                                        if len(forward) > 1 else ""),
        "",
        "| | (a) forward, VM up | (b) drain after an outage |",
        "|---|---:|---:|",
        f"| samples/s into VictoriaMetrics | {f['samples_per_s']:,.0f} | "
        f"**{d['samples_per_s']:,.0f}** |",
        f"| frames/s equivalent (20 samples each) | {f['samples_per_s'] / workload.samples:,.0f}"
        f" | **{d['frames_per_s']:,.0f}** |",
        f"| vmagent CPU per sample | {f['vmagent_us_per_sample']:.2f} µs | "
        f"{d['vmagent_us_per_sample']:.2f} µs |",
        f"| VictoriaMetrics CPU | {f['vm_cpu_s']:.2f} s | {d['vm_cpu_s']:.2f} s |",
        f"| wall time | {f['wall_s']:.2f} s (posting took {f['post_s']:.2f} s) | "
        f"{d['drain_s']:.2f} s from VM's first row to its last; {d['since_ready_s']:.2f} s "
        f"from VM ready ({d['first_delivery_s']:.2f} s retry back-off) |",
        f"| queue before the drain | — | {d['queued_mb']:.0f} MB, of which "
        f"{d['on_disk_mb']:.0f} MB written to disk (the rest in memory) |",
        f"| vmagent peak RSS | {f['vmagent_rss_mb']:.0f} MB | — |",
        f"| samples lost (VM count_over_time) | {sum(r['lost_samples'] for r in forward):,.0f}"
        f" | {sum(r['lost_samples'] for r in drain):,.0f} |",
        "",
        "Per run (a / b samples/s): " + ", ".join(
            f"{a['samples_per_s']:,.0f} / {b['samples_per_s']:,.0f}"
            for a, b in zip(forward, drain, strict=True)) + ".",
        "",
        "*(a)* runs from the first POST to vmagent to the poll (every 0.1 s) of VM's "
        "`vm_rows_inserted_total{type=\"promremotewrite\"}` that shows every sample; *(b)* "
        "from the first poll showing rows to the one showing all. " + (
            "VictoriaMetrics holds every sample exactly once in both." if lost == 0 else
            f"**{lost:,.0f} samples missing in VictoriaMetrics.**"),
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--results", type=Path, default=BENCH_DIR / "RESULTS.md")
    args = ap.parse_args(argv)
    command = shlex.join([".venv/bin/python", "bench/vmagent_peer.py",
                          *(sys.argv[1:] if argv is None else argv)])
    workload = Workload.ending_in_past(args.devices, args.frames, args.samples)
    bodies = build_requests(workload)
    root = Path(tempfile.mkdtemp(prefix="fleetgate-vmagent-"))
    forward: list[dict[str, Any]] = []
    drain: list[dict[str, Any]] = []
    try:
        for i in range(args.repeat):
            print(f"run {i + 1}/{args.repeat}: vmagent forward ...", flush=True)
            forward.append(run_forward(workload, bodies, root / f"run{i}-forward"))
            print(f"run {i + 1}/{args.repeat}: vmagent drain ...", flush=True)
            drain.append(run_drain(workload, bodies, root / f"run{i}-drain"))
            print(f"  forward {forward[-1]['samples_per_s']:,.0f} samples/s, "
                  f"drain {drain[-1]['samples_per_s']:,.0f} samples/s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = markdown(command, procstat.machine(), workload, forward, drain)
    print(text)
    results_file.write_section(args.results, "vmagent", text)
    lost = sum(r["lost_samples"] for r in forward + drain)
    if lost:
        print(f"CHECK FAILED: {lost:,.0f} samples missing in VictoriaMetrics", file=sys.stderr)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
