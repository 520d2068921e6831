"""Network faults between the gateway and the broker, and between the gateway and the receiver.

The gateway runs in a network namespace of its own (tests/faults/netns.py); each hop gets a
partition (every packet dropped both ways), 30 % packet loss each way, or 2 s latency each way,
for a few seconds while a seeded random fleet publishes (a minute in the long run: longer than
the MQTT keepalive's 45 s, so a partition ends with both sides having dropped the connection).
Whatever happens on the wire, every sample reaches VictoriaMetrics exactly once, and the gateway
neither dies nor restarts.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devstack import wait_for
from tests.faults import seeded_fleet
from tests.faults.conftest import FaultReport
from tests.faults.netstack import NetStack, gateway_in_netns
from tests.faults.probes import FAST_RETRY, readyz

pytestmark = pytest.mark.e2e

HOP_TEXT = {"mqtt": "the broker", "rw": "the receiver"}
FAULT_TEXT = {"partition": "Network partition", "loss": "30 % packet loss",
              "latency": "2 s latency"}
CASES = [(hop, fault) for hop in ("mqtt", "rw") for fault in ("partition", "loss", "latency")]
SETTINGS = {**FAST_RETRY, "remote_write_max_samples": "200"}


def _progress(net: NetStack, hop: str) -> int:
    """What the faulted hop carries: messages from the broker (not frames committed: the
    gateway commits frames of its own, such as stale markers, whatever the broker does), or
    samples the receiver accepted."""
    if hop == "mqtt":
        return int(net.gw.metric("fleetgate_frames_received_total"))
    return int(net.gw.pipeline()["endpoints"][0]["sent_samples"])


def _hold_fault(net: NetStack, hop: str, fault: str, hold_s: float) -> str:
    """Apply the fault for hold_s; for a partition, check that nothing crosses it."""
    net.netns.apply(hop, fault)
    started = time.monotonic()
    queued_before = net.stats.queued() or 0
    # Holding a fault for its duration is the point here, not a condition to await.
    time.sleep(1.0)  # packets already past the wire land; after this, nothing crosses
    crossed_from = _progress(net, hop)
    time.sleep(max(0.0, hold_s - (time.monotonic() - started)))
    crossed = _progress(net, hop) - crossed_from
    wire = net.netns.wires[hop]
    seen = f"{wire.dropped:,} packets dropped"
    if fault == "partition":
        assert crossed == 0, f"{crossed} crossed a partition of the {hop} hop"
        if hop == "mqtt":
            queued = net.stats.queued() or 0
            seen += f", the broker's queue {queued_before:,} -> {queued:,}"
    else:
        seen += f", {crossed:,} {'frames' if hop == 'mqtt' else 'samples'} crossed meanwhile"
    net.netns.heal(hop)
    return seen


@pytest.mark.parametrize(("hop", "fault"), CASES)
def test_network_fault(hop: str, fault: str, tmp_path: Path, fault_report: FaultReport,
                       long_run: bool) -> None:
    """Network fault between the gateway and a neighbour (each hop, each fault)."""
    seed = 100 + CASES.index((hop, fault))
    fault_report.scenario = f"{FAULT_TEXT[fault]} between the gateway and {HOP_TEXT[hop]}"
    hold_s = 60.0 if long_run else {"partition": 4.0, "loss": 5.0, "latency": 5.0}[fault]
    fleet_plan = seeded_fleet.plan(seed, devices=10, frames_per_device=300 if long_run else 50)
    total = len(fleet_plan.messages)
    with gateway_in_netns(tmp_path, seed, **SETTINGS) as net:
        pid = net.gw.pid
        per_round = 4 if long_run else 8
        fleet = seeded_fleet.PlanPublisher(net.mosquitto.url, fleet_plan, per_round, 0.1)
        fleet.start()
        wait_for(lambda: fleet.sent >= total // 5, 60, what="a fifth of the fleet published")
        seen = _hold_fault(net, hop, fault, hold_s)
        fleet.finish(300)
        lost, doubled = net.settle(fleet_plan)
        wait_for(lambda: readyz(net.gw) == 200, 60, what="the gateway ready after the fault")
        alive = net.gw.is_running and net.gw.pid == pid
        reconnects = net.gw.run_log().count("MQTT connected") - 1
        retries = net.gw.metric("fleetgate_forward_retries_total")
    samples = fleet_plan.samples
    fault_report.record(
        frames_in=total, samples_in=samples, samples_out=samples - lost, lost=lost,
        doubled=doubled,
        note=f"seed {seed}; {hold_s:.0f} s; {seen}; {reconnects} MQTT reconnects, "
             f"{retries:.0f} remote-write retries; {fleet_plan.describe()}")
    assert alive, "the gateway died or restarted"
    assert (lost, doubled) == (0, 0)
