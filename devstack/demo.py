"""`make demo` (`python -m devstack demo`): Mosquitto, Prometheus, the gateway and a simulated
fleet on this machine, from a checkout.

Everything runs as child processes of this command, with state under --workdir (default
var/demo), on the usual ports when free (1883, 9090, 8080) and on free ones otherwise.
Ctrl-C (or SIGTERM) stops the simulator, then the gateway (which flushes), then Prometheus and
Mosquitto.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from devstack import (
    LOOPBACK,
    GatewayProcess,
    ManagedProcess,
    Mosquitto,
    Prometheus,
    ServiceFailed,
    ServiceNotInstalled,
    free_port,
    shipped_rule_files,
)


def _port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind((LOOPBACK, preferred))
        except OSError:
            return free_port()
    return preferred


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devstack demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("var/demo"))
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between frames")
    parser.add_argument("--duration", type=float, default=None,
                        help="stop by itself after this many seconds (default: until Ctrl-C)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    workdir: Path = args.workdir.resolve()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    services: list[ManagedProcess] = []
    sim: subprocess.Popen[bytes] | None = None
    try:
        mosquitto = Mosquitto(workdir / "mosquitto", _port(1883)).start()
        services.append(mosquitto)
        api_port = _port(8080)
        prometheus = Prometheus(workdir / "prometheus", _port(9090),
                                scrape_targets=[f"{LOOPBACK}:{api_port}"],
                                rule_files=shipped_rule_files()).start()
        services.append(prometheus)
        gateway = GatewayProcess(workdir / "gateway", mqtt_url=mosquitto.url,
                                 remote_write_urls=[prometheus.remote_write_url], port=api_port)
        services.append(gateway.start())
        with open(workdir / "simulator.log", "ab") as sim_log:  # the child keeps its own fd
            sim = subprocess.Popen(
                [sys.executable, "-m", "firmware_sim", "--mqtt-url", mosquitto.url,
                 "--devices", str(args.devices), "--interval", str(args.interval), "--quiet",
                 # One device's cooling fails after a minute: the alert rules have something
                 # to catch (Prometheus alerts page); rarer faults come at random.
                 "--fault", "overheat=1@60", "--fault-rate", "0.5"],
                stdout=sim_log, stderr=subprocess.STDOUT, start_new_session=True)
    except (ServiceNotInstalled, ServiceFailed) as exc:
        print(f"fleetgate demo: {exc}", file=sys.stderr)
        _stop_all(services, sim)
        return 1

    # Every address printed here must answer 200 in a browser (tests/e2e/test_demo.py
    # fetches each one); Prometheus's UI pages move between builds, so ask it where they are.
    graph = prometheus.ui_url(
        "graph", "g0.expr=device_temperature_celsius&g0.tab=0&g0.range_input=15m")
    alerts = prometheus.ui_url("alerts")
    print(f"""
fleetgate demo is running ({args.devices} simulated devices, a frame every {args.interval:g} s)

  Fleet page            {gateway.url}/
  Prometheus graph      {graph}
  Prometheus alerts     {alerts}
  Gateway API docs      {gateway.url}/docs
  Devices               {gateway.url}/api/v1/devices
  Pipeline health       {gateway.url}/api/v1/pipeline
  Gateway metrics       {gateway.url}/metrics
  MQTT broker           {mosquitto.url}

State and logs are in {workdir}. Press Ctrl-C to stop everything.
""", flush=True)
    code = 0
    try:
        stop.wait(args.duration)
        if args.duration is not None:
            code = _report(prometheus, gateway, args.devices)
    finally:
        _stop_all(services, sim)
    print("fleetgate demo stopped.")
    return code


def _report(prometheus: Prometheus, gateway: GatewayProcess, devices: int) -> int:
    """With --duration: say what reached Prometheus (used by the demo's own test)."""
    deadline = time.monotonic() + 30
    seen = 0
    while time.monotonic() < deadline:
        rows = prometheus.query("count by (device_id) (fleet_device_info)")
        series = prometheus.query('count({device_id!=""})')
        seen = len(rows)
        if seen >= devices and series:
            print(f"demo check: {seen} devices, {series[0]['value'][1]} series in Prometheus; "
                  f"the gateway stored {gateway.metric('fleetgate_frames_stored_total'):.0f} "
                  f"frames and forwarded {gateway.metric('fleetgate_forward_samples_total'):.0f}"
                  " samples")
            return 0
        time.sleep(0.5)
    print(f"demo check FAILED: only {seen} of {devices} devices reached Prometheus",
          file=sys.stderr)
    return 1


def _stop_all(services: list[ManagedProcess], sim: subprocess.Popen[bytes] | None) -> None:
    if sim is not None and sim.poll() is None:
        sim.send_signal(signal.SIGTERM)
        try:
            sim.wait(15)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()
    for service in reversed(services):
        service.stop()
