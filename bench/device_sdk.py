"""CPU per frame of the Python device SDK on the device, against baselines of the same run.

    .venv/bin/python bench/device_sdk.py [--frames 2000] [--repeat 5] [--no-write]

A device publishing a 20-metric registry (14 gauges, 4 counters, 2 histograms of 10 buckets,
one series each) to a real local Mosquitto at QoS 1. Per variant and repeat, this process's CPU
time (time.process_time: every thread, so paho's network thread and its PUBACK handling count)
over `--frames` frames, until the broker has routed every one of them to a subscriber that runs
in another process (mosquitto_sub), so the subscriber's CPU is not counted. Variants:

  packb      msgpack.packb of the Device's frame, decoded into a dict (encoding only, no MQTT)
  paho       a bare paho client publishing the Device's frame, prebuilt (MQTT only)
  device     fleetgate_device.Device with the 20 metrics, publish_now() per frame
  bridge     RegistryBridge over a prometheus_client registry of the 20 metrics, publish_now()
  translate  the bridge's registry -> Samples translation alone (no MQTT), which includes
  collect    prometheus_client's own registry.collect() (what any exporter pays per scrape)

The order rotates per repeat; the section reports medians and per-repeat ratios to `paho`.
Writes its section of bench/RESULTS.md (`device-sdk`) unless --no-write.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from results_file import write_section

from devstack import Mosquitto
from fleetgate_device import Device, DeviceCore, RegistryBridge
from fleetgate_device.bridge import Translator

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
N_GAUGES, N_COUNTERS, N_HISTOGRAMS = 14, 4, 2
VARIANTS = ("packb", "paho", "device", "bridge", "translate", "collect")
READY_TOPIC = "bench/ready"


def fill_registry() -> CollectorRegistry:
    r = CollectorRegistry()
    for i in range(N_GAUGES):
        Gauge(f"edge_gauge_{i}", "g", registry=r).set(1000.5 + i)
    for i in range(N_COUNTERS):
        Counter(f"edge_events_{i}", "c", registry=r).inc(12345 + i)
    for i in range(N_HISTOGRAMS):
        h = Histogram(f"edge_latency_{i}_seconds", "h", buckets=BUCKETS, registry=r)
        for v in (0.0007, 0.003, 0.02, 0.2, 2.0):
            h.observe(v)
    return r


def fill_device(device: Device) -> None:
    for i in range(N_GAUGES):
        device.gauge(f"edge_gauge_{i}").set(1000.5 + i)
    for i in range(N_COUNTERS):
        device.counter(f"edge_events_total_{i}").inc(12345 + i)
    for i in range(N_HISTOGRAMS):
        h = device.histogram(f"edge_latency_{i}_seconds", buckets=BUCKETS)
        for v in (0.0007, 0.003, 0.02, 0.2, 2.0):
            h.observe(v)


def device_frame() -> bytes:
    """The telemetry payload the Device builds for fill_device's metrics: the baselines send
    and encode exactly this frame."""
    device = Device("bench-frame", "mqtt://127.0.0.1:9", hw="bench", fw="1")
    fill_device(device)
    core = DeviceCore("bench-frame", hw="bench", fw="1", interval_ms=1000)
    core.connected = True  # a live frame, not a ringed one (no transport is involved)
    return core.telemetry(int(time.time() * 1000), device.samples())[-1].payload


class Routed:
    """mosquitto_sub in its own process, exiting after `count` telemetry messages."""

    def __init__(self, mosq: Mosquitto, device_id: str, count: int) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub", "-h", mosq.host,
             "-p", str(mosq.port), "-q", "1", "-F", "%t", "-C", str(count + 1),
             "-t", READY_TOPIC, "-t", f"fleet/{device_id}/telemetry"],
            stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        # the retained marker arrives right after the subscription: subscribed from here on
        if self.proc.stdout.readline().strip() != READY_TOPIC:
            raise RuntimeError("mosquitto_sub did not subscribe")

    def wait(self, timeout: float = 120.0) -> None:
        self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise RuntimeError(f"mosquitto_sub exited {self.proc.returncode}")


def measure(mosq: Mosquitto, device_id: str, frames: int,
            send: Callable[[], object], routed: bool = True) -> float:
    """CPU microseconds per frame of `send`, called `frames` times (and the routing wait)."""
    sub = Routed(mosq, device_id, frames) if routed else None
    start = time.process_time()
    for _ in range(frames):
        send()
    if sub is not None:
        sub.wait()
    return (time.process_time() - start) / frames * 1e6


def run_variant(name: str, mosq: Mosquitto, frames: int, index: int) -> float:
    device_id = f"bench-{name}-{index}"
    if name == "packb":
        frame = msgpack.unpackb(device_frame())
        return measure(mosq, device_id, frames, lambda: msgpack.packb(frame), routed=False)
    if name == "translate":
        translator, registry = Translator(device_id), fill_registry()
        return measure(mosq, device_id, frames, lambda: translator.samples(registry),
                       routed=False)
    if name == "collect":
        registry = fill_registry()
        return measure(mosq, device_id, frames, lambda: list(registry.collect()), routed=False)
    if name == "paho":
        payload = device_frame()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id)
        client.connect(mosq.host, mosq.port)
        client.loop_start()
        try:
            topic = f"fleet/{device_id}/telemetry"
            return measure(mosq, device_id, frames, lambda: client.publish(topic, payload, 1))
        finally:
            client.disconnect()
            client.loop_stop()
    interval = 3600.0  # only publish_now() sends
    if name == "device":
        device = Device(device_id, mosq.url, hw="bench", fw="1", interval_s=interval)
        fill_device(device)
        target: Device | RegistryBridge = device
    else:
        target = RegistryBridge(fill_registry(), device_id=device_id, mqtt_url=mosq.url,
                                hw="bench", fw="1", interval_s=interval)
    target.start()
    try:
        wait_connected(target)
        return measure(mosq, device_id, frames, target.publish_now)
    finally:
        target.stop()


def wait_connected(target: Device | RegistryBridge) -> None:
    device = target.device if isinstance(target, RegistryBridge) else target
    deadline = time.monotonic() + 10
    while not device.connected:
        if time.monotonic() > deadline:
            raise RuntimeError("the Device did not connect")
        time.sleep(0.01)


def run(frames: int, repeat: int, variants: tuple[str, ...]) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="bench-device-sdk-") as tmp:
        mosq = Mosquitto(Path(tmp) / "mosquitto", persistence=False)
        mosq.start()
        try:
            marker = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-marker")
            marker.connect(mosq.host, mosq.port)
            marker.loop_start()
            marker.publish(READY_TOPIC, b"1", 1, retain=True).wait_for_publish(10)
            marker.disconnect()
            marker.loop_stop()
            for r in range(repeat):
                k = r % len(variants)
                for name in variants[k:] + variants[:k]:
                    results[name].append(run_variant(name, mosq, frames, r))
                print(f"repeat {r + 1}/{repeat}: " + ", ".join(
                    f"{n} {results[n][-1]:.1f}" for n in variants), flush=True)
        finally:
            mosq.stop()
    return results


def report(results: dict[str, list[float]], frames: int, repeat: int, seconds: float) -> str:
    payload_len = len(device_frame())
    load = os.getloadavg()
    lines = [
        "## Python device SDK: CPU per frame on the device (`bench/device_sdk.py`)",
        "",
        f"Command: `.venv/bin/python bench/device_sdk.py --frames {frames} --repeat {repeat}` "
        f"({seconds:.0f} s; {platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores, load {load[0]:.1f} at the end). One frame = 20 metrics "
        f"(14 gauges, 4 counters, 2 histograms x 10 buckets), {payload_len} bytes as the "
        "Device encodes it (the baselines send and encode that frame); QoS 1 to a local "
        "Mosquitto, counted until the broker routed every frame to a subscriber in another "
        "process. Process CPU (all threads) per frame, median of the repeats; ratio = "
        "per-repeat median of variant / paho.",
        "",
        "| variant | what it does per frame | CPU µs/frame (median) | min-max | x paho |",
        "|---|---|---:|---:|---:|",
    ]
    what = {"packb": "msgpack.packb of the Device's frame as a dict (no MQTT)",
            "paho": "bare paho publish of the Device's frame, prebuilt (no encoding)",
            "device": "Device.publish_now(): values -> Samples -> frame -> paho",
            "bridge": "RegistryBridge.publish_now(): registry.collect() -> Samples -> Device",
            "translate": "the bridge's registry -> Samples alone (no MQTT)",
            "collect": "prometheus_client's registry.collect() alone (inside translate)"}
    for name in results:
        values = results[name]
        ratio = statistics.median(v / p for v, p in zip(values, results["paho"], strict=True))
        lines.append(f"| {name} | {what[name]} | {statistics.median(values):.1f} | "
                     f"{min(values):.1f}-{max(values):.1f} | {ratio:.2f} |")
    if "device" in results and "bridge" in results:
        device = statistics.median(results["device"])
        lines += ["", f"At a 10 s interval the Device costs {device / 1e4:.3f}% of one core "
                  f"({device:.0f} µs per frame); the bridge "
                  f"{statistics.median(results['bridge']) / 1e4:.3f}%."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated, from " + ",".join(VARIANTS) + " (paho needed)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    variants = tuple(v for v in args.variants.split(",") if v)
    unknown = set(variants) - set(VARIANTS)
    if unknown or "paho" not in variants:
        parser.error(f"--variants: unknown {sorted(unknown)} or paho missing (the ratio's base)")
    started = time.monotonic()
    results = run(args.frames, args.repeat, variants)
    text = report(results, args.frames, args.repeat, time.monotonic() - started)
    print(text)
    if not args.no_write:
        write_section(RESULTS, "device-sdk", text)


if __name__ == "__main__":
    main()
