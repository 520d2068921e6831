"""`fleetgate-sim` / `fleetgate sim` / `python -m firmware_sim`: run a simulated fleet."""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from firmware_sim.config import ConfigError, FleetConfig
from firmware_sim.device import DEFAULT_RING_SIZE
from firmware_sim.faults import FAULT_KINDS, FaultSpecError, parse_fault
from firmware_sim.fleet import Fleet
from firmware_sim.profiles import PROFILES, UnknownProfileError, parse_profiles


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetgate-sim",
        description="Simulate a fleet of edge-ML devices publishing telemetry over MQTT.",
    )
    # Added in this order, which is the order of --help.
    _add_fleet_args(parser)
    _add_naming_and_frame_args(parser)
    _add_credential_args(parser)
    _add_fault_and_output_args(parser)
    return parser


def _add_fleet_args(parser: argparse.ArgumentParser) -> None:
    """Where to connect, how many devices of which profiles, how often and how long."""
    _add_env_option(parser, "--mqtt-url", "FLEETGATE_MQTT_URL", "mqtt://127.0.0.1:1883",
                    "broker URL")
    parser.add_argument("--devices", type=int, default=20, help="number of devices (%(default)s)")
    parser.add_argument(
        "--profiles",
        default=None,
        help=f"comma-separated profiles, assigned round-robin (default all: {','.join(PROFILES)})",
    )
    parser.add_argument(
        "--interval", type=float, default=5.0, help="seconds between frames (%(default)s)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: until Ctrl-C / SIGTERM)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for a reproducible fleet")


def _add_naming_and_frame_args(parser: argparse.ArgumentParser) -> None:
    """Topic and id naming, and the frames: how many, how large, how many buffered."""
    _add_env_option(parser, "--topic-prefix", "FLEETGATE_TOPIC_PREFIX", "fleet",
                    "MQTT topic prefix")
    _add_env_option(parser, "--gateway-id", "FLEETGATE_GATEWAY_ID", "gw1",
                    "gateway whose state topic gates publishing")
    parser.add_argument("--device-prefix", default="sim", help="device id prefix (%(default)s)")
    parser.add_argument(
        "--frames",
        type=int,
        default=None,
        help="publish exactly N telemetry frames per device, then stop once all are acknowledged",
    )
    parser.add_argument(
        "--samples-per-frame",
        type=int,
        default=None,
        help="samples in each frame (default: each profile's natural count)",
    )
    parser.add_argument(
        "--ring-size",
        type=int,
        default=DEFAULT_RING_SIZE,
        help="frames each device buffers while offline (%(default)s)",
    )


def _add_env_option(parser: argparse.ArgumentParser, flag: str, variable: str, default: str,
                    what: str) -> None:
    """An option the environment can set, as it sets the gateway's own (FLEETGATE_*)."""
    parser.add_argument(flag, default=os.environ.get(variable, default),
                        help=f"{what} (env {variable}; default %(default)s)")


def _add_credential_args(parser: argparse.ArgumentParser) -> None:
    """How each device proves who it is to a broker that asks (mqtts:// URLs)."""
    parser.add_argument("--tls-ca", metavar="FILE", default=None,
                        help="CA certificate that signed the broker's (default: the system's)")
    parser.add_argument(
        "--tls-cert-dir", metavar="DIR", default=None,
        help="per-device client certificates: DIR/<device_id>.crt and DIR/<device_id>.key "
        "(e.g. the clients/ folder of `fleetgate certs issue`)")
    parser.add_argument(
        "--password-file", metavar="FILE", default=None,
        help="per-device passwords, one <device_id>:<password> line each; the username is the "
        "device id")


def _add_fault_and_output_args(parser: argparse.ArgumentParser) -> None:
    """Deliberate misbehaviour, and where the summary and progress go."""
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND=WHO[@PARAM]",
        help="make devices misbehave; repeatable. WHO: all, N%%, N, or ids (sim-0001,sim-0002). "
        + "; ".join(f"{kind}: PARAM = {p.meaning} (default {p.default:g})"
                    for kind, p in FAULT_KINDS.items()),
    )
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        help="spontaneous model faults (overheat, memory leak, accuracy collapse, ...) per "
        "device-hour (%(default)s)",
    )
    parser.add_argument("--summary-json", type=Path, default=None, help="write the summary here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def config_from_args(args: argparse.Namespace) -> FleetConfig:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    return FleetConfig(
        mqtt_url=args.mqtt_url,
        devices=args.devices,
        profiles=parse_profiles(args.profiles),
        interval_s=args.interval,
        duration_s=args.duration,
        frames=args.frames,
        seed=seed,
        topic_prefix=args.topic_prefix,
        gateway_id=args.gateway_id,
        device_prefix=args.device_prefix,
        ring_size=args.ring_size,
        samples_per_frame=args.samples_per_frame,
        faults=tuple(parse_fault(text) for text in args.fault),
        fault_rate_per_hour=args.fault_rate,
        tls_ca_file=args.tls_ca,
        tls_cert_dir=args.tls_cert_dir,
        password_file=args.password_file,
    )


@contextmanager
def _stop_on_signals(fleet: Fleet) -> Iterator[None]:
    """SIGINT/SIGTERM stop the fleet cleanly; only possible from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: FrameType | None) -> None:
        fleet.stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        fleet = Fleet(config_from_args(args), progress=None if args.quiet else _print)
    except (ConfigError, UnknownProfileError, FaultSpecError) as exc:
        parser.error(str(exc))  # exits 2
    if not args.quiet:
        cfg = fleet.config
        _print(
            f"sim: {cfg.devices} devices ({','.join(p.name for p in cfg.profiles)}) -> "
            f"{cfg.mqtt_url} prefix={cfg.topic_prefix!r} every {cfg.interval_s}s seed={cfg.seed}"
        )
    with _stop_on_signals(fleet):
        summary = fleet.run()
    print(summary.line(), flush=True)
    if args.summary_json is not None:
        args.summary_json.write_text(json.dumps(summary.to_json(), indent=1, sort_keys=True))
    return 0


def _print(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
