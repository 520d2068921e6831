"""The gateway over mqtts:// against mqtt://, in one run (`throughput.py --mqtt-tls`).

Each transport is one way the gateway reaches the broker: `plain` (mqtt://, fast path on: the
baseline, as shipped), `tls` (mqtts://, fast path on), `tls-stock` (mqtts://,
mqtt_fast_path=false) and, if asked, `plain-stock` (mqtt://, fast path off: the fast path's
gain on plain TCP, to set beside its gain over TLS). Every run has its own Mosquitto from the
shipped config plus a TLS listener (a throw-away CA and a server certificate for 127.0.0.1
from gateway/certs.py); the load generator always publishes on the plain listener, so only the
gateway's side changes. Per repeat every transport runs every workload back to back, the order
rotating from one repeat to the next; the figures are per-repeat ratios against `plain` of the
same repeat.
This module names the transports, makes the certificates and writes the "mqtt-tls" section;
bench/probe_tls_receive.py measures the receive path alone (MqttIngest, no SQLite) the same way.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import same_run
from same_run import Figure

from devstack import Mosquitto
from devstack.ports import LOOPBACK, free_port
from gateway import certs

SECTION = "mqtt-tls"
BASELINE = "plain"
DEFAULT_TRANSPORTS = "plain,tls,tls-stock"
CPU = Figure("cpu_us_per_frame", "gateway CPU per frame", "µs", 1, lower_is_better=True)
RATE = Figure("frames_per_s", "frames/s end to end", "", 0, lower_is_better=False)
BROKER = Figure("broker_us_per_msg", "broker CPU per frame", "µs", 1, lower_is_better=True)


@dataclass(frozen=True)
class Transport:
    name: str
    tls: bool
    fast_path: bool

    @property
    def describe(self) -> str:
        return (f"`{self.name}`: {'mqtts://' if self.tls else 'mqtt://'}, "
                f"mqtt_fast_path={'true' if self.fast_path else 'false'}")


TRANSPORTS = {t.name: t for t in (Transport("plain", False, True), Transport("tls", True, True),
                                   Transport("tls-stock", True, False),
                                   Transport("plain-stock", False, False))}


def parse_transports(text: str) -> tuple[Transport, ...]:
    """NAME,NAME,...: `plain` (the baseline) and at least one other."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TRANSPORTS]
    if unknown or BASELINE not in names or len(set(names)) != len(names) or len(names) < 2:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected {BASELINE} and others of {', '.join(TRANSPORTS)}, "
            f"e.g. {DEFAULT_TRANSPORTS}")
    return tuple(TRANSPORTS[n] for n in names)


def order(transports: Sequence[Transport], repeat: int) -> list[Transport]:
    """The transports in the order repeat `repeat` (from 0) runs them: rotated each repeat."""
    shift = repeat % len(transports)
    return [*transports[shift:], *transports[:shift]]


# ---------------------------------------------------------------------------- the broker
@dataclass(frozen=True)
class BrokerPki:
    ca: Path
    cert: Path  # SAN 127.0.0.1 and localhost
    key: Path


def issue_pki(folder: Path) -> BrokerPki:
    """A throw-away CA and a broker certificate for 127.0.0.1 and localhost, made as an
    operator would with `fleetgate certs init` (gateway/certs.py: EC P-256)."""
    paths = certs.init_ca(folder, ["localhost"], [LOOPBACK])
    return BrokerPki(paths.ca_cert, paths.server_cert, paths.server_key)


class TlsMosquitto(Mosquitto):
    """devstack's Mosquitto (shipped config, plain listener for the load generator) plus a TLS
    listener for the gateway; ready when both are open."""

    def __init__(self, workdir: Path, pki: BrokerPki) -> None:
        self.tls_port = free_port()
        super().__init__(workdir, extra_conf="\n".join([
            f"listener {self.tls_port} {LOOPBACK}", f"cafile {pki.ca}",
            f"certfile {pki.cert}", f"keyfile {pki.key}", "require_certificate false"]))

    @property
    def tls_url(self) -> str:
        return f"mqtts://{LOOPBACK}:{self.tls_port}"

    def _is_ready(self) -> bool:
        return (super()._is_ready()
                and f"listen socket on port {self.tls_port}." in self.run_log())


def gateway_connection(transport: Transport, mosq: Mosquitto,
                       pki: BrokerPki | None) -> tuple[str, dict[str, str]]:
    """The gateway's mqtt_url and its settings for `transport` (FLEETGATE_* in its env)."""
    settings = {"mqtt_fast_path": "true" if transport.fast_path else "false"}
    if not transport.tls:
        return mosq.url, settings
    if not isinstance(mosq, TlsMosquitto) or pki is None:
        raise ValueError(f"transport {transport.name} needs the TLS broker")
    return mosq.tls_url, {**settings, "mqtt_ca_file": str(pki.ca)}


def negotiated(pki: BrokerPki, workdir: Path) -> str:
    """TLS version and cipher a verifying client gets from such a Mosquitto (for the report)."""
    with TlsMosquitto(workdir, pki) as mosq:
        context = ssl.create_default_context(cafile=str(pki.ca))
        with socket.create_connection((LOOPBACK, mosq.tls_port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=LOOPBACK) as tls:
            cipher = tls.cipher()
            return f"{tls.version()}, {cipher[0] if cipher else 'unknown cipher'}"


# ---------------------------------------------------------------------------- running
Runs = dict[str, list[dict[str, Any]]]  # per transport, one result per repeat


def alternate(transports: Sequence[Transport], repeat: int, cases: Sequence[str],
              run: Callable[[int, str, Transport, int], dict[str, Any]]) -> list[Runs]:
    """run(repeat, case, transport, attempt) for every repeat, case and transport (rotating
    order), a failed run once more (as bench/same_run.py does)."""
    results: list[Runs] = [{t.name: [] for t in transports} for _ in cases]
    for i in range(repeat):
        for case, runs in zip(cases, results, strict=True):
            for transport in order(transports, i):
                for attempt in range(1 + same_run.RUN_RETRIES):
                    print(f"run {i + 1}/{repeat}, {case}: gateway {transport.name} ...",
                          flush=True)
                    try:
                        runs[transport.name].append(run(i, case, transport, attempt))
                        break
                    except same_run.FAILURES as exc:
                        if attempt == same_run.RUN_RETRIES:
                            raise
                        print(f"  failed ({exc!r}); once more", flush=True)
            print("  " + "; ".join(f"{name} {r[-1][CPU.key]:.1f} µs/frame"
                                   for name, r in runs.items()), flush=True)
    return results


# ---------------------------------------------------------------------------- report
def ratios(runs: Runs, name: str, figure: Figure) -> list[float]:
    """`name` / plain, per repeat (the two ran in the same repeat)."""
    return [float(s[figure.key]) / float(b[figure.key])
            for b, s in zip(runs[BASELINE], runs[name], strict=True)]


def _table(transports: Sequence[Transport], runs: Runs, figure: Figure) -> list[str]:
    others = [t.name for t in transports if t.name != BASELINE]
    head = ("| repeat | order | " + " | ".join(f"{t.name} {figure.label} {figure.unit}".rstrip()
                                              for t in transports)
            + " | " + " | ".join(f"{n} / {BASELINE}" for n in others) + " |")
    lines = [head, "|---:|---|" + "---:|" * (len(transports) + len(others))]
    for i in range(len(runs[BASELINE])):
        row = [str(i + 1), " → ".join(t.name for t in order(transports, i))]
        row += [figure.text(runs[t.name][i][figure.key]) for t in transports]
        row += [f"{ratios(runs, n, figure)[i]:.3f}" for n in others]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _figure_lines(transports: Sequence[Transport], runs: Runs, figure: Figure) -> list[str]:
    out = []
    base = statistics.median(float(r[figure.key]) for r in runs[BASELINE])
    for t in transports:
        if t.name == BASELINE:
            continue
        median = statistics.median(float(r[figure.key]) for r in runs[t.name])
        paired = ratios(runs, t.name, figure)
        out.append(f"- {figure.label}, {t.name} vs {BASELINE}: medians "
                   f"**{figure.with_unit(median)}** vs {figure.with_unit(base)}, ratio "
                   f"{median / base:.3f} (per-repeat: {same_run.spread(paired)}): "
                   f"{same_run.noise_verdict(paired, figure)}.")
    return out


def markdown(*, transports: Sequence[Transport], command: str, machine: dict[str, str],
             repeat: int, titles: Sequence[str], results: Sequence[Runs], tls: str,
             check: Callable[[dict[str, Any]], list[str]], load: str) -> str:
    out = [
        "## MQTT over TLS: the gateway's cost of mqtts:// (`bench/throughput.py --mqtt-tls`)",
        "",
        f"- Command: `{command}`",
        f"- Date: {machine['date']}; commit {machine['commit']}",
        f"- Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory']} RAM, "
        f"Linux {machine['kernel']}; shared with other work while it ran ({load})",
        "- Transports: " + "; ".join(t.describe for t in transports) + ". Otherwise default "
        "settings; each gateway started by bench/gateway_launcher.py from this checkout",
        "- TLS: Mosquitto's TLS listener, a private CA (mqtt_ca_file), server certificate "
        f"ECDSA P-256 for 127.0.0.1 (gateway/certs.py); negotiated {tls}. The load generator "
        "publishes on the plain listener in every run: only the gateway's connection changes",
        f"- Repeats: {repeat}; the order of the transports rotates from one repeat to the next. "
        "Back-to-back runs differ by up to ±20% on this machine: the per-repeat ratios against "
        f"`{BASELINE}` are the figures to read (a difference counts when the 95% interval of "
        "their mean excludes 1)",
        "",
    ]
    for title, runs in zip(titles, results, strict=True):
        found = [f"{name} run {i}: {p}" for name, rs in runs.items()
                 for i, r in enumerate(rs, 1) for p in check(r)]
        out += [f"### {title}", "", *_table(transports, runs, CPU), "",
                *_figure_lines(transports, runs, CPU), *_figure_lines(transports, runs, RATE),
                *_figure_lines(transports, runs, BROKER), "",
                "Output checks (every run, every transport): "
                + ("all passed." if not found else "FAILED: " + "; ".join(found)), ""]
    return "\n".join(out).rstrip("\n")
