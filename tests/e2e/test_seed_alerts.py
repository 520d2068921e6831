"""A simulated device overheats; Prometheus, fed only through the gateway, fires the alert.

The whole chain runs for real: the simulator's devices over MQTT into Mosquitto, the gateway,
remote-write into Prometheus, and Prometheus evaluating the shipped rule files
(deploy/prometheus/rules/*.yml) every second.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import Mosquitto, Prometheus, shipped_rule_files, wait_for
from firmware_sim.config import FleetConfig
from firmware_sim.faults import parse_fault
from firmware_sim.profiles import parse_profiles
from tests.support.publisher import FleetThread

pytestmark = pytest.mark.e2e


@pytest.fixture
def alerting_prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    prometheus = Prometheus(tmp_path / "prometheus", rule_files=shipped_rule_files(),
                            evaluation_interval="1s")
    assert prometheus.rule_files, "no rule files in deploy/prometheus/rules"
    prometheus.start()
    try:
        yield prometheus
    finally:
        prometheus.stop()


def firing(prometheus: Prometheus, alertname: str) -> dict[str, dict[str, Any]]:
    """Firing alerts of that name, by device_id."""
    return {a["labels"].get("device_id", ""): a for a in prometheus.alerts()
            if a["labels"]["alertname"] == alertname and a["state"] == "firing"}


def test_an_overheating_device_fires_device_overheating_through_the_gateway(
        mosquitto: Mosquitto, alerting_prometheus: Prometheus, gateway_factory) -> None:  # type: ignore[no-untyped-def]
    prometheus = alerting_prometheus
    gateway_factory(mosquitto, prometheus)
    config = FleetConfig(mqtt_url=mosquitto.url, devices=2, interval_s=1.0, seed=11,
                         profiles=parse_profiles("liquid-edge"),
                         faults=(parse_fault("overheat=sim-0001"),))
    run = FleetThread(config)
    try:
        wait_for(lambda: "sim-0001" in firing(prometheus, "DeviceOverheating"), 180,
                 what="DeviceOverheating firing for sim-0001 in Prometheus")
        alert = firing(prometheus, "DeviceOverheating")["sim-0001"]
        hot = prometheus.query('device_temperature_celsius{device_id="sim-0001"}')
        cool = prometheus.query('device_temperature_celsius{device_id="sim-0002"}')
    finally:
        summary = run.stop()

    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["profile"] == "liquid-edge"
    assert float(alert["value"]) > 85
    assert float(hot[0]["value"][1]) > 85
    # The healthy device is there, cool, and not alerting.
    assert float(cool[0]["value"][1]) < 70
    assert "sim-0002" not in firing(prometheus, "DeviceOverheating")
    assert "sim-0002" not in firing(prometheus, "DeviceTemperatureHigh")
    assert summary.total("published") > 0
    stats = {d.device_id: d for d in summary.devices}
    assert stats["sim-0001"].faults == ("overheat",)
    assert stats["sim-0002"].faults == ()
