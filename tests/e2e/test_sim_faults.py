"""The simulator's device and link faults, end to end through Mosquitto, the gateway and
VictoriaMetrics: what each fault does to the stream, and that the gateway keeps its promise
(nothing published is lost, nothing is counted twice, bad input is quarantined)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from devstack import Mosquitto, VictoriaMetrics, wait_for
from firmware_sim.config import FleetConfig
from firmware_sim.faults import parse_fault
from firmware_sim.fleet import Fleet
from firmware_sim.profiles import parse_profiles

pytestmark = pytest.mark.e2e

BUDGET = 40
SKEW_S = 600


def inference_timestamps(vm: VictoriaMetrics) -> dict[str, list[int]]:
    """Every stored sample of one counter per device: one per frame the gateway forwarded."""
    out: dict[str, list[int]] = {}
    for row in vm.export('{__name__="liquid_inference_total"}'):
        out.setdefault(row["metric"]["device_id"], []).extend(
            ts for ts, v in zip(row["timestamps"], row["values"], strict=True) if v is not None)
    return out


def test_link_faults_through_the_gateway_lose_nothing_and_double_nothing(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory(mosquitto, victoria_metrics, device_series_budget=str(BUDGET))
    faults = ("duplicate=sim-0001@0.5", "malformed=sim-0002@0.3", "cardinality=sim-0003@3",
              "flap=sim-0004@2", "reboot=sim-0005@2", f"clock-skew=sim-0006@{SKEW_S}")
    config = FleetConfig(mqtt_url=mosquitto.url, devices=6, interval_s=0.1, duration_s=8,
                         seed=5, profiles=parse_profiles("liquid-edge"),
                         faults=tuple(parse_fault(f) for f in faults))
    summary = Fleet(config).run()
    stats = {d.device_id: d for d in summary.devices}
    published = summary.ledger
    frames = {device: sum(hi - lo + 1 for spans in boots.values() for lo, hi in spans)
              for device, boots in published.items()}

    # Each fault happened.
    assert stats["sim-0001"].duplicates > 5
    assert stats["sim-0002"].malformed > 5
    assert stats["sim-0004"].replayed > 0
    assert stats["sim-0005"].reboots >= 1

    def all_arrived() -> bool:
        if not gw.caught_up():
            return False
        stored = inference_timestamps(victoria_metrics)
        return all(len(stored.get(device, [])) >= n for device, n in frames.items())
    wait_for(all_arrived, 60, what="every published frame in VictoriaMetrics")

    stored = inference_timestamps(victoria_metrics)
    for device, n in frames.items():
        doubles = {ts: c for ts, c in Counter(stored[device]).items() if c > 1}
        assert not doubles, f"{device}: samples stored twice {doubles}"
        if device != "sim-0005":
            # A rebooting device may have had frames on the wire, unacknowledged, when it lost
            # its RAM; the gateway can have more of those than the ledger knows of.
            assert len(stored[device]) == n, device

    # Duplicates are dropped by the gateway, malformed payloads quarantined, one each.
    assert gw.metric("fleetgate_frames_duplicate_total") >= stats["sim-0001"].duplicates
    assert gw.metric("fleetgate_frames_invalid_total") == summary.total("malformed")
    quarantine = gw.http.get("/api/v1/quarantine").raise_for_status().json()
    assert {q["device_id"] for q in _rows(quarantine)} == {"sim-0002"}

    # The cardinality attack stops at the device's series budget.
    attacker = gw.http.get("/api/v1/devices/sim-0003").raise_for_status().json()
    assert attacker["series_budget"]["series"] == BUDGET
    assert attacker["series_budget"]["refused_samples"] > 0
    # (fleet_* series are the gateway's own, about the device, outside its budget)
    device_series = victoria_metrics.export('{device_id="sim-0003", __name__!~"fleet_.*"}')
    assert len(device_series) == BUDGET

    # A flapping device replays what it buffered: nothing missing.
    flapper = gw.http.get("/api/v1/devices/sim-0004").raise_for_status().json()
    assert flapper["completeness"]["missing"] == 0

    # Each reboot is a new boot id with seqs from 0 (a device can reboot again before it has
    # sent anything: such a boot never reaches the gateway). What the ring held when the power
    # went is lost, and shows as gaps.
    rebooter = gw.http.get("/api/v1/devices/sim-0005").raise_for_status().json()
    boots = {b["boot"]: b for b in rebooter["completeness"]["boots"]}
    assert len(published["sim-0005"]) >= 2
    assert set(boots) == {int(boot) for boot in published["sim-0005"]}
    assert sum(b["missing"] for b in boots.values()) <= stats["sim-0005"].lost_on_reboot

    # A clock 10 minutes ahead is measured and its samples moved back to the present.
    skewed = gw.http.get("/api/v1/devices/sim-0006").raise_for_status().json()
    assert abs(skewed["clock_ahead_ms"] - SKEW_S * 1000) < 10_000
    assert max(stored["sim-0006"]) < (time.time() + 60) * 1000


def _rows(page: Any) -> list[dict[str, Any]]:
    return page["items"] if isinstance(page, dict) else page


def test_ring_overflow_on_the_device_is_the_gap_the_gateway_reports(
        mosquitto: Mosquitto, victoria_metrics: VictoriaMetrics, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    gw = gateway_factory(mosquitto, victoria_metrics)
    # Outages of 0.3-0.75 s at 10 frames/s with a ring of 3 frames: every outage overflows.
    config = FleetConfig(mqtt_url=mosquitto.url, devices=2, interval_s=0.1, frames=60,
                         ring_size=3, seed=8, profiles=parse_profiles("audio-nets"),
                         faults=(parse_fault("flap=sim-0001@3"),))
    summary = Fleet(config).run()  # returns once every frame is sent and acknowledged
    stats = {d.device_id: d for d in summary.devices}
    assert stats["sim-0001"].dropped > 0 and stats["sim-0001"].unsent == 0
    assert stats["sim-0001"].published == 60 - stats["sim-0001"].dropped
    assert stats["sim-0002"].dropped == 0

    def completeness(device_id: str) -> dict[str, Any]:
        return dict(gw.http.get(f"/api/v1/devices/{device_id}").raise_for_status()
                    .json()["completeness"])
    wait_for(lambda: completeness("sim-0001")["received"] == stats["sim-0001"].published, 30,
             what="every frame sim-0001 sent")
    # The seqs the ring pushed out are exactly the gateway's missing frames, unless the very
    # first frames were the ones pushed out (before the first received seq there is no gap).
    ledger = summary.ledger["sim-0001"]
    (spans,) = ledger.values()
    first_received = spans[0][0]
    assert completeness("sim-0001")["missing"] == stats["sim-0001"].dropped - first_received
    assert completeness("sim-0002")["missing"] == 0
