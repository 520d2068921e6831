"""Mosquitto restarted (persistence on) while the fleet and the gateway are connected and
publishing: both sides reconnect by themselves, the broker's persisted queue and the clients'
resends fill the gap, and dedup absorbs the resends."""

from __future__ import annotations

import pytest

import tests.support.factories as f
from devstack import Mosquitto, VictoriaMetrics, wait_for
from tests.faults.conftest import FaultReport
from tests.faults.probes import METRIC, GatewayFactory, committed_upto, readyz
from tests.support.publisher import PacedFleet
from tests.support.receivers import expected_temperatures, vm_account

pytestmark = pytest.mark.e2e


def test_broker_restarts_while_devices_and_gateway_are_connected(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics,
        gateway_factory: GatewayFactory, fault_report: FaultReport, long_run: bool) -> None:
    """Mosquitto restarted while devices and gateway are connected (2 times; 10 in the long run)."""
    gw = gateway_factory(mosquitto, victoria_metrics)
    restarts = 10 if long_run else 2
    devices, seqs = range(20), range(100 * (restarts + 1))
    total = len(devices) * (len(seqs) + 1)
    base = f.now_ms() - len(seqs) * 1000 - 30_000
    fleet = PacedFleet(mosquitto.url, devices, seqs, base, round_interval_s=0.05)
    fleet.start()
    try:
        for k in range(restarts):
            target = total * (k + 1) // (restarts + 1)
            wait_for(lambda t=target: committed_upto(gw) >= t, 90,  # type: ignore[misc]
                     what=f"gateway to commit {target} frames")
            mosquitto.stop()
            wait_for(lambda: readyz(gw) == 503, 15, what="/readyz to report the broker gone")
            problems = gw.http.get("/readyz").json()["problems"]
            assert problems == ["not connected to the MQTT broker"]
            mosquitto.start()  # same port, same persistence dir
            wait_for(lambda: readyz(gw) == 200, 60, what="the gateway to reconnect by itself")
    finally:
        fleet.join(300)
    assert fleet.error is None, f"publisher failed: {fleet.error!r}"
    assert fleet.sent == total
    wait_for(lambda: gw.metric("fleetgate_frames_stored_total") > 0
             and committed_upto(gw) >= total and gw.caught_up(), 90,
             what="every frame stored and forwarded")
    expected = expected_temperatures(devices, seqs)
    lost, doubled = vm_account(victoria_metrics, METRIC, expected)
    samples_in = len(devices) * len(seqs)
    fault_report.record(frames_in=total, samples_in=samples_in, samples_out=samples_in - lost,
                        lost=lost, doubled=doubled,
                        note=f"{restarts} broker restarts mid-publish; duplicates dropped by "
                             f"the gateway: {gw.metric('fleetgate_frames_duplicate_total'):.0f}")
    assert (lost, doubled) == (0, 0)
    assert gw.metric("fleetgate_mqtt_connected") == 1
