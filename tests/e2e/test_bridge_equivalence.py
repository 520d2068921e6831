"""The Liquid Edge seed's collector, scraped by Prometheus and bridged through fleetgate, is the
same series set with the same values.

The registry re-creates LiquidMetricsCollector of /work/shared/seeds/000 (Liquid Edge LLN kit,
docs/monitoring.md): its six metrics with their names, label names (device_id first, as the
seed puts it on every metric) and the histogram's buckets; the psutil thread is replaced by
fixed values. Beside them, the other types a seed may use (Info, Enum, Summary). One registry,
two paths:

  scrape:  prometheus_client's HTTP exporter  <- Prometheus A scraping it every second
  bridge:  RegistryBridge -> Mosquitto -> the gateway -> remote write -> Prometheus B

Both are queried at one instant after both have the values, then again after the values move.
The series must be equal apart from what each path adds or leaves by design:
  - the scrape adds `job` and `instance` (Prometheus's target labels);
  - the scrape stores prometheus_client's `*_created` series (the children's creation times),
    which the bridge does not send;
  - the gateway puts `device_id` (from the MQTT topic: the bridge's device id) on every series:
    on the seed's own metrics it is their own label back (the bridge removed it), and the
    metrics without one (the Info, Enum and Summary here) gain it;
  - the gateway adds `fleet_device_info` (its own family, not named liquid_*), and would add
    birth labels and external labels: none are configured here, so none appear.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
    start_http_server,
)

from devstack import LOOPBACK, Mosquitto, Prometheus, free_port, wait_for
from fleetgate_device import RegistryBridge
from tests.support.scraping_prometheus import scraping_prometheus
from tests.support.services import running

DEVICE = "liquid-edge-07"
SCRAPE_ONLY_LABELS = {"job", "instance"}
Series = dict[tuple[tuple[str, str], ...], float]


class LiquidMetrics:
    """The seed's LiquidMetricsCollector metrics (names, labels, buckets), fixed values."""

    def __init__(self, device_id: str) -> None:
        self.registry = r = CollectorRegistry()
        self.device_id = device_id
        self.inference_counter = Counter(
            "liquid_inference_total", "Total number of inferences performed",
            ["device_id", "model_version"], registry=r)
        self.inference_latency = Histogram(
            "liquid_inference_duration_seconds", "Inference latency in seconds",
            ["device_id", "model_version"],
            buckets=[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0], registry=r)
        self.memory_usage = Gauge("liquid_memory_usage_bytes", "Memory usage in bytes",
                                  ["device_id", "memory_type"], registry=r)
        self.cpu_usage = Gauge("liquid_cpu_usage_percent", "CPU usage percentage",
                               ["device_id", "core"], registry=r)
        self.model_accuracy = Gauge("liquid_model_accuracy", "Current model accuracy",
                                    ["device_id", "model_version", "metric_type"], registry=r)
        self.energy = Gauge("liquid_energy_consumption_milliwatts",
                            "Energy consumption in milliwatts", ["device_id", "component"],
                            registry=r)
        # not in the seed: the other types prometheus_client offers, bridged the same way
        self.build = Info("liquid_build", "Build", registry=r)
        self.state = Enum("liquid_runtime_state", "Runtime state",
                          states=["idle", "inferring", "throttled"], registry=r)
        self.preprocess = Summary("liquid_preprocess_seconds", "Preprocessing", registry=r)

    def record_inference(self, latency_s: float, model_version: str,
                         accuracy: float | None = None) -> None:
        """The seed's record_inference, verbatim in effect."""
        self.inference_counter.labels(self.device_id, model_version).inc()
        self.inference_latency.labels(self.device_id, model_version).observe(latency_s)
        if accuracy is not None:
            self.model_accuracy.labels(self.device_id, model_version,
                                       "inference_accuracy").set(accuracy)

    def fill(self) -> None:
        for i, latency in enumerate((0.0004, 0.003, 0.007, 0.02, 0.3, 2.0)):
            self.record_inference(latency, "v1.2", accuracy=0.9 + i / 100)
        self.record_inference(0.04, "v2.0-beta")
        self.memory_usage.labels(self.device_id, "virtual").set(3_221_225_472.5)
        for core, pct in enumerate((12.5, 97.25, 0.0, 33.0)):
            self.cpu_usage.labels(self.device_id, str(core)).set(pct)
        self.energy.labels(self.device_id, "npu").set(812.125)
        self.energy.labels(self.device_id, "radio").set(45.0)
        self.build.info({"version": "0.3.1", "board": "jetson-orin-nano"})
        self.state.state("inferring")
        self.preprocess.observe(0.125)


@pytest.fixture
def exporter() -> Iterator[tuple[LiquidMetrics, str]]:
    metrics = LiquidMetrics(DEVICE)
    metrics.fill()
    port = free_port()
    server, thread = start_http_server(port, addr=LOOPBACK, registry=metrics.registry)
    yield metrics, f"{LOOPBACK}:{port}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def scraped(tmp_path: Path, exporter: tuple[LiquidMetrics, str]) -> Iterator[Prometheus]:
    """Prometheus A: scrapes the exporter every second."""
    yield from running(scraping_prometheus(tmp_path / "scrape", [exporter[1]]))


def series_at(prom: Prometheus, instant: float, drop: set[str]) -> dict[str, Series]:
    """{name: {labels without `drop`: value}} of every liquid_* series at `instant`."""
    out: dict[str, Series] = {}
    for row in prom.query('{__name__=~"liquid_.*"}', time=instant):
        labels = dict(row["metric"])
        name = labels.pop("__name__")
        key = tuple(sorted((k, v) for k, v in labels.items() if k not in drop))
        out.setdefault(name, {})[key] = float(row["value"][1])
    return out


def with_device_id(key: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The labels as the gateway writes them: device_id added where the series lacks it."""
    return tuple(sorted({"device_id": DEVICE, **dict(key)}.items()))


def compare(scraped: Prometheus, bridged: Prometheus, last_change: str) -> dict[str, Series]:
    """Wait until both show `last_change` (a PromQL selector of the series the test set last,
    so every earlier change is in too), then compare the two at one instant."""
    wait_for(lambda: bool(scraped.query(last_change)) and bool(bridged.query(last_change)), 20,
             what=f"both Prometheus to show {last_change}")
    instant = time.time()
    scrape = {name: {with_device_id(key): v for key, v in values.items()}
              for name, values in series_at(scraped, instant, SCRAPE_ONLY_LABELS).items()}
    bridge = series_at(bridged, instant, set())
    created = {name for name in scrape if name.endswith("_created")}
    assert created, "prometheus_client exposes _created series (the difference to document)"
    for name in created:
        del scrape[name]
    assert scrape == bridge
    return bridge


def test_the_seed_collector_scraped_and_bridged_gives_the_same_series(
        exporter: tuple[LiquidMetrics, str], scraped: Prometheus, mosquitto: Mosquitto,
        prometheus: Prometheus, gateway_factory: Any) -> None:
    metrics = exporter[0]
    gateway_factory(mosquitto, prometheus)
    bridge = RegistryBridge(metrics.registry, device_id=DEVICE, mqtt_url=mosquitto.url,
                            interval_s=1.0, hw="jetson-orin-nano", fw="0.3.1")
    bridge.start()
    try:
        first = compare(scraped, prometheus, 'liquid_runtime_state{liquid_runtime_state='
                        '"inferring"} == 1')
        # what a seed's dashboards read, by name, label and le, as the scrape has them
        assert len(first["liquid_inference_duration_seconds_bucket"]) == 2 * 10
        assert first["liquid_inference_duration_seconds_bucket"][(
            ("device_id", DEVICE), ("le", "0.025"), ("model_version", "v1.2"))] == 4.0
        assert first["liquid_runtime_state"][(
            ("device_id", DEVICE), ("liquid_runtime_state", "inferring"))] == 1.0
        assert first["liquid_build_info"][(("board", "jetson-orin-nano"), ("device_id", DEVICE),
                                           ("version", "0.3.1"))] == 1.0
        assert first["liquid_memory_usage_bytes"][(
            ("device_id", DEVICE), ("memory_type", "virtual"))] == 3_221_225_472.5
        # the values move (the state last: once it shows, the rest is in); both paths follow
        metrics.record_inference(0.008, "v2.0-beta", accuracy=0.5)
        metrics.cpu_usage.labels(DEVICE, "1").set(5.5)
        metrics.state.state("throttled")
        second = compare(scraped, prometheus, 'liquid_runtime_state{liquid_runtime_state='
                         '"throttled"} == 1')
        assert second != first
        info = prometheus.query("fleet_device_info")
        assert [(r["metric"]["device_id"], r["metric"]["platform"]) for r in info] == [
            (DEVICE, "jetson-orin-nano")]
    finally:
        bridge.stop()

