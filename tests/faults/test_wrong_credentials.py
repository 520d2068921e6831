"""Wrong remote-write credentials during a run, then fixed (issue 13's fault row): the fleet
publishes all along, the endpoint (VictoriaMetrics behind vmauth, which answers a wrong token
400 and echoes it) pauses with every frame kept in the buffer, nothing is dead-lettered, and once
the token is right every sample arrives exactly once. VictoriaMetrics keeps duplicates, so a
frame sent twice would show."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import tests.support.factories as f
from devstack import GatewayProcess, Mosquitto, VictoriaMetrics, wait_for
from devstack.vmauth import VmAuth
from tests.faults.conftest import FaultReport
from tests.faults.probes import METRIC, committed_upto
from tests.support.publisher import PacedFleet
from tests.support.receivers import expected_temperatures, vm_account, vm_samples
from tests.support.secure_endpoints import (
    GatewayFactory,
    dead_letter_rows,
    endpoint,
    is_paused,
    leaks,
    secret_file,
    start_gateway,
)
from tests.support.services import running

pytestmark = pytest.mark.e2e

NAME = "vm-gated"
TOKEN = secrets.token_urlsafe(24)  # what vmauth lets in; random, so a leak is no coincidence


@dataclass(frozen=True)
class Sizes:
    devices: range
    seqs: range
    round_s: float
    fix_at: int  # frames published (births included) before the operator fixes the token


def _sizes(long_run: bool) -> Sizes:
    if long_run:  # 20 devices, one frame each per 0.1 s for 90 s; wrong for the first 60 s
        devices, seqs, round_s = range(20), range(900), 0.1
    else:
        devices, seqs, round_s = range(10), range(150), 0.02
    frames = len(devices) * (len(seqs) + 1)
    return Sizes(devices, seqs, round_s, fix_at=frames * 2 // 3)


@pytest.fixture
def vmauth(tmp_path: Path, victoria_metrics: VictoriaMetrics) -> Iterator[VmAuth]:
    yield from running(VmAuth(tmp_path / "vmauth", users=[(TOKEN, victoria_metrics.url)]))


def _wrong_then_fixed(tmp_path: Path, mosquitto: Mosquitto, vm: VictoriaMetrics,
                      vmauth: VmAuth, gateway_factory: GatewayFactory, report: FaultReport,
                      long_run: bool, fix: Callable[[GatewayProcess, Path], None],
                      how: str) -> None:
    wrong = secrets.token_urlsafe(24)
    token_file = secret_file(tmp_path / "secrets" / "vm-token", wrong)
    gw = start_gateway(gateway_factory, mosquitto,
                       {"url": vmauth.remote_write_url, "name": NAME,
                        "bearer_token_file": token_file})
    size = _sizes(long_run)
    # Every frame's device time in the past (the gateway quarantines one 5 min ahead).
    base = f.now_ms() - (len(size.seqs) + 300) * 1000
    fleet = PacedFleet(mosquitto.url, size.devices, size.seqs, base, round_interval_s=size.round_s)
    fleet.start()
    wrong_from = time.monotonic()
    try:
        wait_for(lambda: is_paused(gw, NAME) and fleet.sent >= size.fix_at,
                 120 if long_run else 30, what="the endpoint paused while the fleet publishes")
        state = endpoint(gw, NAME)
        # What the operator sees, and what must not have happened, while the token is wrong.
        assert "cannot find the provided auth token" in str(state["last_error"]), state
        assert state["dead_letters"] == 0 and dead_letter_rows(gw) == [], state
        assert vm_samples(vm, METRIC) == {}
        assert leaks(gw, wrong, TOKEN) == []  # this run's log: a restart starts a new one
        held = int(state["behind_frames"])
        still_publishing = fleet.is_alive()
        fix(gw, token_file)
        wrong_s = time.monotonic() - wrong_from
    finally:
        fleet.join(300)
    assert fleet.error is None, f"publisher failed: {fleet.error!r}"

    # >=: devices silent for a while get stale markers, frames of the gateway's own.
    wait_for(lambda: committed_upto(gw) >= fleet.sent and gw.caught_up(), 60,
             what="every frame stored and forwarded after the fix")
    expected = expected_temperatures(size.devices, size.seqs)
    lost, doubled = vm_account(vm, METRIC, expected)
    samples_in = sum(len(v) for v in expected.values())
    dead = int(endpoint(gw, NAME)["dead_letters"])
    report.record(frames_in=fleet.sent, samples_in=samples_in, samples_out=samples_in - lost,
                  lost=lost, doubled=doubled,
                  note=f"wrong bearer token for {wrong_s:.0f} s (vmauth: 400, token echoed), "
                       f"{held:,} frames held at the fix"
                       f"{' while the fleet still published' if still_publishing else ''}; "
                       f"{how}; {dead} dead letters")
    assert (lost, doubled) == (0, 0)
    assert dead == 0 and dead_letter_rows(gw) == []
    assert gw.metric("fleetgate_forward_dead_letters_total") == 0
    assert not is_paused(gw, NAME)
    assert leaks(gw, wrong, TOKEN) == []


def test_wrong_token_fixed_by_rewriting_the_token_file(
        tmp_path: Path, mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, vmauth: VmAuth,
        gateway_factory: GatewayFactory, fault_report: FaultReport, long_run: bool) -> None:
    """Wrong remote-write bearer token while devices publish, fixed by rewriting its file."""

    def rewrite(gw: GatewayProcess, token_file: Path) -> None:
        secret_file(token_file, TOKEN)  # no restart: the paused endpoint's probe re-reads it

    _wrong_then_fixed(tmp_path, mosquitto, victoria_metrics, vmauth, gateway_factory,
                      fault_report, long_run, rewrite,
                      "fixed by rewriting the token file, no restart")


def test_wrong_token_fixed_by_restarting_the_gateway(
        tmp_path: Path, mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, vmauth: VmAuth,
        gateway_factory: GatewayFactory, fault_report: FaultReport, long_run: bool) -> None:
    """Wrong remote-write bearer token while devices publish, fixed with a gateway restart."""

    def restart(gw: GatewayProcess, token_file: Path) -> None:
        gw.stop()  # SIGTERM: the paused frames stay in SQLite
        assert gw.returncode == 0, gw.log_tail()
        secret_file(token_file, TOKEN)
        gw.start()

    _wrong_then_fixed(tmp_path, mosquitto, victoria_metrics, vmauth, gateway_factory,
                      fault_report, long_run, restart,
                      "fixed while the gateway was stopped, then started (SIGTERM, exit 0)")
