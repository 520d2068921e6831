"""The simulator at fleet scale: N devices (default 10,000) from one process into Mosquitto.

Each device has its own MQTT connection and Will, as real firmware does. Measured, with the
simulator in this process and Mosquitto started from Debian's package:
- connect: seconds until every device is connected (CONNECTs are paced at 1,000/s);
- steady state: frames acknowledged per second and the simulator's CPU per frame over a window
  after the whole fleet is connected, against the rate the configuration asks for;
- baseline in the same run: one paho client (its own network thread) publishing pre-encoded
  frames of the same profiles at QoS 1, i.e. what MQTT alone costs per frame in Python.
  The ratio says what the simulation (models, encoding, 10,000 sockets, scheduling) adds.

With --through-gateway the fleet also goes through a fleetgate gateway into VictoriaMetrics,
and the frames the gateway stored and forwarded are counted against the simulator's ledger
(the gateway's CPU share is reported too).

Writes the "sim" section of bench/RESULTS.md (--through-gateway: the "sim-gateway" section).
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procstat
import results_file

from device_protocol import encode_telemetry, telemetry_topic
from devstack import GatewayProcess, Mosquitto, VictoriaMetrics, wait_for
from firmware_sim.config import FleetConfig
from firmware_sim.device import SimDevice
from firmware_sim.fleet import Fleet
from firmware_sim.profiles import PROFILES

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def run_fleet(url: str, devices: int, interval_s: float, window_s: float,
              gateway: GatewayProcess | None = None) -> dict[str, float]:
    config = FleetConfig(mqtt_url=url, devices=devices, interval_s=interval_s, seed=1)
    fleet = Fleet(config)
    thread = threading.Thread(target=fleet.run, daemon=True)
    t0 = time.monotonic()
    cpu0 = time.process_time()
    thread.start()
    wait_for(lambda: fleet.connected() == devices, 300, interval=0.2,
             what=f"{devices} devices connected")
    connect_s = time.monotonic() - t0
    connect_cpu = time.process_time() - cpu0
    # Let the cadence settle (each device's first frame is jittered over one interval), and
    # devices that sampled before they could connect replay their rings: the window measures
    # the live cadence only.
    time.sleep(interval_s)
    wait_for(lambda: fleet.buffered() == 0, 120, interval=0.5, what="rings drained")
    # ... and the broker has caught up with the connect storm's backlog of PUBACKs.
    wait_for(lambda: fleet.produced() - len(fleet.ledger) < 100, 120, interval=0.5,
             what="acknowledgements caught up")
    replayed0 = fleet.ledger.historical
    gw_cpu0 = procstat.cpu(gateway.pid) if gateway is not None and gateway.pid else None
    produced0 = fleet.produced()
    frames0, cpu1, w0 = len(fleet.ledger), time.process_time(), time.monotonic()
    time.sleep(window_s)
    frames1, cpu2, w1 = len(fleet.ledger), time.process_time(), time.monotonic()
    replayed_in_window = fleet.ledger.historical - replayed0
    produced = fleet.produced() - produced0
    gw_cpu = procstat.cpu_since(gw_cpu0) if gw_cpu0 is not None else float("nan")
    fleet.stop()
    thread.join(120)
    frames = frames1 - frames0
    extra: dict[str, float] = {}
    if gateway is not None:
        published = len(fleet.ledger)

        def telemetry_kept() -> float:
            return (gateway.metric("fleetgate_frames_received_total", kind="telemetry")
                    - gateway.metric("fleetgate_frames_duplicate_total"))
        wait_for(lambda: telemetry_kept() >= published and gateway.caught_up(), 300,
                 interval=0.5, what="the gateway storing and forwarding every published frame")
        extra = {"published": published, "gateway_kept": telemetry_kept(),
                 "gateway_cpu_share": gw_cpu / (w1 - w0),
                 "forwarded_samples": gateway.metric("fleetgate_forward_samples_total")}
    return extra | {
        "connect_s": connect_s,
        "connect_cpu_s": connect_cpu,
        "frames_per_s": frames / (w1 - w0),
        "replayed_in_window": replayed_in_window,
        "produced_per_s": produced / (w1 - w0),
        "asked_per_s": devices / interval_s,
        "cpu_us_per_frame": 1e6 * (cpu2 - cpu1) / max(frames, 1),
        "cpu_share": (cpu2 - cpu1) / (w1 - w0),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_baseline(url: str, frames: int) -> dict[str, float]:
    """One paho client publishing pre-encoded frames at QoS 1, acks awaited in windows."""
    payloads = []
    profiles = list(PROFILES.values())
    for i in range(200):
        device = SimDevice(f"sim-{i:04d}", profiles[i % len(profiles)], random.Random(i),
                           interval_ms=5000)
        payloads.append(encode_telemetry(device.next_telemetry(1_790_000_000_000)))
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="baseline",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect(url.split("//")[1].split(":")[0], int(url.rsplit(":", 1)[1]))
    client.loop_start()
    topic = telemetry_topic("fleet", "baseline")
    cpu0, w0 = time.process_time(), time.monotonic()
    infos = []
    for n in range(frames):
        infos.append(client.publish(topic, payloads[n % len(payloads)], qos=1))
        if len(infos) >= 1000:
            for info in infos:
                info.wait_for_publish(30)
            infos = []
    for info in infos:
        info.wait_for_publish(30)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - w0
    client.disconnect()
    client.loop_stop()
    return {"cpu_us_per_frame": 1e6 * cpu / frames, "frames_per_s": frames / wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between frames")
    ap.add_argument("--window", type=float, default=30.0, help="steady-state window, seconds")
    ap.add_argument("--baseline-frames", type=int, default=20_000)
    ap.add_argument("--through-gateway", action="store_true",
                    help="also run a gateway forwarding into VictoriaMetrics and count frames")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sim-bench-") as tmp, \
            Mosquitto(Path(tmp) / "mosquitto") as broker:
        gateway = vm = None
        if args.through_gateway:
            vm = VictoriaMetrics(Path(tmp) / "vm").start()
            gateway = GatewayProcess(Path(tmp) / "gateway", mqtt_url=broker.url,
                                     remote_write_urls=[vm.remote_write_url]).start()
        try:
            mosq_cpu0 = procstat.cpu(broker.pid) if broker.pid else None
            fleet = run_fleet(broker.url, args.devices, args.interval, args.window, gateway)
            mosq_cpu = procstat.cpu_since(mosq_cpu0) if mosq_cpu0 else float("nan")
        finally:
            if gateway is not None:
                gateway.stop()
            if vm is not None:
                vm.stop()
        base = run_baseline(broker.url, args.baseline_frames)
    ratio = fleet["cpu_us_per_frame"] / base["cpu_us_per_frame"]
    lines = [
        f"{args.devices} devices connected in {fleet['connect_s']:.1f} s "
        f"(simulator CPU {fleet['connect_cpu_s']:.1f} s)",
        f"steady state: {fleet['produced_per_s']:,.0f} frames/s sampled, "
        f"{fleet['frames_per_s']:,.0f} acknowledged "
        f"(asked {fleet['asked_per_s']:,.0f}; {fleet['replayed_in_window']:,.0f} of them "
        f"replays), simulator {fleet['cpu_us_per_frame']:.0f} us "
        f"CPU/frame, {100 * fleet['cpu_share']:.0f} % of one core",
        f"baseline (one paho client, pre-encoded frames): {base['cpu_us_per_frame']:.0f} us "
        f"CPU/frame -> the simulator costs {ratio:.2f}x that per frame",
        f"simulator peak RSS {fleet['rss_mb']:.0f} MB; Mosquitto CPU over the run "
        f"{mosq_cpu:.1f} s",
    ]
    if gateway is not None:
        lines.append(
            f"through the gateway: {fleet['published']:,.0f} frames published, "
            f"{fleet['gateway_kept']:,.0f} stored by the gateway (duplicates excluded), all "
            f"forwarded ({fleet['forwarded_samples']:,.0f} samples); gateway "
            f"{100 * fleet['gateway_cpu_share']:.0f} % of a core")
    for line in lines:
        print(line)
    machine = procstat.machine()
    command = "python bench/sim_scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    body = "\n".join([
        "## Simulator at fleet scale (`bench/sim_scale.py`)",
        "",
        f"`{command.strip()}` at {machine['commit']} on {machine['cpu_model']}, "
        f"{machine['cpus']} CPUs, {machine['date']}. One process, one connection and Will per "
        "device, one epoll loop for all sockets.",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| devices | {args.devices:,} |",
        f"| all connected after | {fleet['connect_s']:.1f} s |",
        f"| frames/s sampled / acknowledged (asked) | {fleet['produced_per_s']:,.0f} / "
        f"{fleet['frames_per_s']:,.0f} ({fleet['asked_per_s']:,.0f}) |",
        f"| simulator CPU per frame | {fleet['cpu_us_per_frame']:.0f} µs |",
        f"| simulator CPU share at that rate | {100 * fleet['cpu_share']:.0f} % of a core |",
        f"| baseline: one paho client, pre-encoded frames | {base['cpu_us_per_frame']:.0f} "
        "µs/frame |",
        f"| ratio simulator / baseline | {ratio:.2f}x |",
        f"| simulator peak RSS | {fleet['rss_mb']:.0f} MB |",
        *([
            f"| through the gateway: frames published / stored by the gateway | "
            f"{fleet['published']:,.0f} / {fleet['gateway_kept']:,.0f} |",
            f"| gateway CPU share at that rate | {100 * fleet['gateway_cpu_share']:.0f} % of a "
            "core |",
        ] if gateway is not None else []),
    ])
    section = "sim-gateway" if gateway is not None else "sim"
    if gateway is not None:
        body = body.replace("## Simulator at fleet scale", "## Simulator at fleet scale, "
                            "through the gateway into VictoriaMetrics", 1)
    results_file.write_section(args.results, section, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
