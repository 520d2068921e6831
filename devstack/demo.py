"""`make demo` (`python -m devstack demo`): Mosquitto, Prometheus, the gateway and a simulated
fleet on this machine, from a checkout.

Everything runs as child processes of this command, with state under --workdir (default
var/demo), on the usual ports when free (1883, 9090, 8080) and on free ones otherwise.
Ctrl-C (or SIGTERM) stops the simulator, then the gateway (which flushes), then Prometheus and
Mosquitto.

With --secure (`make demo-secure`) the MQTT hop is the production one: the broker runs the
shipped deploy/mosquitto/secure config (TLS only, 8883 when free, the certificate's CN is the
username, the shipped ACL), every simulated device presents its own client certificate and the
gateway its own (user `fleetgate`), all issued by `gateway.certs` under WORKDIR/certs (what
`fleetgate certs init` / `issue` make; kept between runs). The web pages stay plain HTTP on
loopback, so they open in a browser without trusting the demo's CA.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
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
from devstack.secure_mosquitto import SecureMosquitto
from gateway import certs
from gateway.errors import ConfigError

GATEWAY_USER = "fleetgate"  # the gateway's identity in the shipped ACL


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
    parser.add_argument("--secure", action="store_true",
                        help="MQTT over TLS with a client certificate per device and for the "
                        "gateway, through the shipped secure broker config (make demo-secure)")
    return parser


@dataclass
class _Broker:
    """The broker as the gateway and the simulator must reach it."""

    service: ManagedProcess
    url: str
    gateway_settings: dict[str, str] = field(default_factory=dict)
    sim_flags: list[str] = field(default_factory=list)
    notes: str = ""  # printed under the addresses


def _plain_broker(workdir: Path) -> _Broker:
    mosquitto = Mosquitto(workdir / "mosquitto", _port(1883)).start()
    return _Broker(mosquitto, mosquitto.url)


def demo_certificates(certs_dir: Path, devices: int) -> certs.CaPaths:
    """A CA and server certificate (127.0.0.1, localhost), a client certificate for the gateway
    and for each simulated device; what an earlier run made is kept."""
    paths = certs.ca_paths(certs_dir)
    if not paths.ca_key.exists():
        certs.init_ca(certs_dir, ["localhost"], [LOOPBACK])
    # The simulator's device ids (firmware_sim's default prefix).
    for name in [GATEWAY_USER, *(f"sim-{i:04d}" for i in range(1, devices + 1))]:
        if not paths.client(name)[0].exists():
            certs.issue_client(certs_dir, name)
    return paths


def _secure_broker(workdir: Path, devices: int) -> _Broker:
    paths = demo_certificates(workdir / "certs", devices)
    broker = SecureMosquitto(workdir / "mosquitto-secure", paths.dir, port=_port(8883),
                             password_port=_port(8884), persistence=True).start()
    cert, key = paths.client(GATEWAY_USER)
    watch = shlex.join(["mosquitto_sub", "-h", LOOPBACK, "-p", str(broker.port), "--cafile",
                        str(paths.ca_cert), "--cert", str(cert), "--key", str(key),
                        "-t", "fleet/+/telemetry", "-F", "%t %l bytes"])
    notes = (f"  TLS only; every device has its own certificate in {paths.clients_dir}\n"
             f"  (CA {paths.ca_cert}). Only the gateway's identity may read every device:\n"
             f"    {watch}\n")
    return _Broker(broker, broker.url,
                   gateway_settings={"mqtt_ca_file": str(paths.ca_cert),
                                     "mqtt_cert_file": str(cert), "mqtt_key_file": str(key)},
                   sim_flags=["--tls-ca", str(paths.ca_cert),
                              "--tls-cert-dir", str(paths.clients_dir)],
                   notes=notes)


def _start_simulator(args: argparse.Namespace, broker: _Broker,
                     log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as sim_log:  # the child keeps its own fd
        return subprocess.Popen(
            [sys.executable, "-m", "firmware_sim", "--mqtt-url", broker.url, *broker.sim_flags,
             "--devices", str(args.devices), "--interval", str(args.interval), "--quiet",
             # One device's cooling fails after a minute: the alert rules have something
             # to catch (Prometheus alerts page); rarer faults come at random.
             "--fault", "overheat=1@60", "--fault-rate", "0.5"],
            stdout=sim_log, stderr=subprocess.STDOUT, start_new_session=True)


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
        broker = (_secure_broker(workdir, args.devices) if args.secure
                  else _plain_broker(workdir))
        services.append(broker.service)
        api_port = _port(8080)
        prometheus = Prometheus(workdir / "prometheus", _port(9090),
                                scrape_targets=[f"{LOOPBACK}:{api_port}"],
                                rule_files=shipped_rule_files()).start()
        services.append(prometheus)
        gateway = GatewayProcess(workdir / "gateway", mqtt_url=broker.url,
                                 remote_write_urls=[prometheus.remote_write_url], port=api_port,
                                 settings=broker.gateway_settings)
        services.append(gateway.start())
        sim = _start_simulator(args, broker, workdir / "simulator.log")
    except (ServiceNotInstalled, ServiceFailed, ConfigError) as exc:
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
  MQTT broker           {broker.url}
{broker.notes}
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
