"""RegistryBridge's translation: prometheus_client registries -> the Samples the Device sends.

No network: the Translator is pure. Each metric type of prometheus_client 0.2x, labelled
children, and the device_id rules (equal: removed; different: ValueError naming both ids).
The end-to-end counterpart (a real scrape against the bridged series) is
tests/e2e/test_bridge_equivalence.py.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
)
from prometheus_client.core import GaugeHistogramMetricFamily, Metric

from fleetgate_device import HistogramValue, Sample
from fleetgate_device.bridge import DeviceIdMismatch, RegistryBridge, Translator

DEVICE = "pi-07"


def translate(registry: CollectorRegistry, device_id: str = DEVICE) -> dict[tuple, Sample]:
    samples = Translator(device_id).samples(registry)
    by_key = {(s.name, tuple(sorted(s.labels.items()))): s for s in samples}
    assert len(by_key) == len(samples), "one Sample per series"
    return by_key


def test_gauges_are_gauges_per_labelled_child_as_float64() -> None:
    r = CollectorRegistry()
    Gauge("board_temp_c", "t", registry=r).set(41)
    mem = Gauge("liquid_memory_usage_bytes", "m", ["memory_type"], registry=r)
    mem.labels("virtual").set(2**53 + 2)  # needs float64, not float32
    mem.labels("swap").set(0)
    got = translate(r)
    assert got == {
        ("board_temp_c", ()): Sample("board_temp_c", 41.0, {}, "gauge"),
        ("liquid_memory_usage_bytes", (("memory_type", "virtual"),)):
            Sample("liquid_memory_usage_bytes", float(2**53 + 2), {"memory_type": "virtual"}),
        ("liquid_memory_usage_bytes", (("memory_type", "swap"),)):
            Sample("liquid_memory_usage_bytes", 0.0, {"memory_type": "swap"}),
    }
    assert all(type(s.value) is float for s in got.values())


def test_counters_send_their_total_sample_as_a_counter_and_drop_created() -> None:
    r = CollectorRegistry()
    Counter("liquid_inference", "n", ["model_version"], registry=r).labels("v2").inc(3)
    Counter("boots_total", "b", registry=r).inc()  # declared with the suffix: same exposure
    got = translate(r)
    assert got == {
        ("liquid_inference_total", (("model_version", "v2"),)):
            Sample("liquid_inference_total", 3.0, {"model_version": "v2"}, "counter"),
        ("boots_total", ()): Sample("boots_total", 1.0, {}, "counter"),
    }


def test_histograms_carry_bounds_from_le_cumulative_counts_count_and_sum() -> None:
    r = CollectorRegistry()
    h = Histogram("liquid_inference_duration_seconds", "l", ["model_version"],
                  buckets=[0.001, 0.005, 0.01, 1.0], registry=r)
    for v in (0.0005, 0.003, 0.003, 0.5, 7.0):
        h.labels("v1").observe(v)
    h.labels("v2")  # a child with no observations yet: zeros, still sent
    got = translate(r)
    v1 = got[("liquid_inference_duration_seconds", (("model_version", "v1"),))]
    assert v1.kind == "histogram"
    assert v1.bounds == (0.001, 0.005, 0.01, 1.0)
    assert isinstance(v1.value, HistogramValue)
    assert (v1.value.count, v1.value.cumulative) == (5.0, (1.0, 3.0, 3.0, 4.0))
    assert v1.value.sum == pytest.approx(7.5065)
    v2 = got[("liquid_inference_duration_seconds", (("model_version", "v2"),))]
    assert v2.value == HistogramValue(0.0, 0.0, (0.0, 0.0, 0.0, 0.0))
    assert len(got) == 2  # no _bucket/_count/_sum/_created scalars beside the histogram


def test_summaries_send_count_and_sum_as_counters_and_quantiles_as_gauges() -> None:
    r = CollectorRegistry()
    Summary("request_seconds", "s", registry=r).observe(0.25)

    class Quantiles:
        def collect(self) -> Iterator[Metric]:
            from prometheus_client.core import SummaryMetricFamily

            m = SummaryMetricFamily("rpc_seconds", "q", count_value=4, sum_value=2.0)
            m.add_sample("rpc_seconds", {"quantile": "0.5"}, 0.4)
            yield m

    r.register(Quantiles())  # type: ignore[arg-type]
    got = translate(r)
    assert got == {
        ("request_seconds_count", ()): Sample("request_seconds_count", 1.0, {}, "counter"),
        ("request_seconds_sum", ()): Sample("request_seconds_sum", 0.25, {}, "counter"),
        ("rpc_seconds_count", ()): Sample("rpc_seconds_count", 4.0, {}, "counter"),
        ("rpc_seconds_sum", ()): Sample("rpc_seconds_sum", 2.0, {}, "counter"),
        ("rpc_seconds", (("quantile", "0.5"),)):
            Sample("rpc_seconds", 0.4, {"quantile": "0.5"}, "gauge"),
    }


def test_info_and_enum_are_exposed_as_the_prometheus_client_exposes_them() -> None:
    r = CollectorRegistry()
    Info("liquid_build", "b", ["board"], registry=r).labels("stm32").info({"version": "1.2"})
    Enum("liquid_state", "s", states=["idle", "running"], registry=r).state("running")
    got = translate(r)
    assert got == {
        ("liquid_build_info", (("board", "stm32"), ("version", "1.2"))):
            Sample("liquid_build_info", 1.0, {"board": "stm32", "version": "1.2"}),
        ("liquid_state", (("liquid_state", "idle"),)):
            Sample("liquid_state", 0.0, {"liquid_state": "idle"}),
        ("liquid_state", (("liquid_state", "running"),)):
            Sample("liquid_state", 1.0, {"liquid_state": "running"}),
    }


def test_every_series_goes_every_collect_even_unchanged() -> None:
    r = CollectorRegistry()
    Gauge("a", "a", registry=r).set(1)
    Counter("b", "b", registry=r)
    t = Translator(DEVICE)
    first, second = t.samples(r), t.samples(r)
    assert first == second and len(first) == 2


def test_a_device_id_equal_to_the_bridges_is_its_identity_and_removed() -> None:
    r = CollectorRegistry()
    Counter("liquid_inference", "n", ["device_id", "model_version"],
            registry=r).labels(DEVICE, "v1").inc()
    Histogram("lat", "l", ["device_id"], buckets=[1.0], registry=r).labels(DEVICE).observe(2)
    got = translate(r)
    assert set(got) == {("liquid_inference_total", (("model_version", "v1"),)), ("lat", ())}
    assert all("device_id" not in s.labels for s in got.values())


@pytest.mark.parametrize("kind", ["gauge", "counter", "histogram"])
def test_a_different_device_id_is_a_value_error_naming_the_metric_and_both_ids(
        kind: str) -> None:
    r = CollectorRegistry()
    cls = {"gauge": Gauge, "counter": Counter, "histogram": Histogram}[kind]
    cls("liquid_metric", "m", ["device_id"], registry=r).labels("edge-42")
    with pytest.raises(ValueError) as raised:
        Translator(DEVICE).samples(r)
    assert isinstance(raised.value, DeviceIdMismatch)
    message = str(raised.value)
    assert "liquid_metric" in message and "'edge-42'" in message and f"'{DEVICE}'" in message


def test_after_start_a_wrong_device_id_leaves_that_series_out_and_logs_once(
        caplog: pytest.LogCaptureFixture) -> None:
    r = CollectorRegistry()
    g = Gauge("liquid_cpu_usage_percent", "c", ["device_id", "core"], registry=r)
    g.labels(DEVICE, "0").set(12)
    g.labels("other", "1").set(99)
    t = Translator(DEVICE, strict=False)
    with caplog.at_level(logging.ERROR, logger="fleetgate_device.bridge"):
        assert t.samples(r) == [Sample("liquid_cpu_usage_percent", 12.0, {"core": "0"})]
        assert t.samples(r) == [Sample("liquid_cpu_usage_percent", 12.0, {"core": "0"})]
    errors = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert len(errors) == 1 and "'other'" in errors[0].getMessage()


def test_two_children_that_become_one_series_without_device_id_are_refused() -> None:
    r = CollectorRegistry()
    g = Gauge("liquid_model_accuracy", "a", ["device_id"], registry=r)
    g.labels(DEVICE).set(0.9)
    g.labels("").set(0.8)  # empty value = no label: the same series once device_id goes
    with pytest.raises(ValueError, match=r"liquid_model_accuracy.*two series"):
        Translator(DEVICE).samples(r)


def test_empty_label_values_are_dropped_as_a_scrape_reads_them() -> None:
    r = CollectorRegistry()
    Gauge("g", "g", ["site", "rack"], registry=r).labels("lab", "").set(3)
    assert Translator(DEVICE).samples(r) == [Sample("g", 3.0, {"site": "lab"})]


def test_non_finite_values_are_left_out_and_the_rest_is_sent(
        caplog: pytest.LogCaptureFixture) -> None:
    r = CollectorRegistry()
    Gauge("broken", "b", registry=r).set(math.nan)
    Gauge("hot", "h", registry=r).set(math.inf)
    Gauge("fine", "f", registry=r).set(1.5)
    Histogram("h", "h", buckets=[1.0], registry=r).observe(math.inf)
    with caplog.at_level(logging.WARNING, logger="fleetgate_device.bridge"):
        assert Translator(DEVICE).samples(r) == [Sample("fine", 1.5)]
    assert {"'broken'", "'hot'", "'h'"} <= {w for rec in caplog.records
                                           for w in rec.getMessage().split()}


def test_gauge_histograms_and_untyped_metrics_of_custom_collectors() -> None:
    class Custom:
        def collect(self) -> Iterator[Metric]:
            gh = GaugeHistogramMetricFamily("queue_age", "q", buckets=[("1.0", 2), ("+Inf", 3)],
                                            gsum_value=4.0)
            yield gh
            untyped = Metric("raw_reading", "u", "unknown")
            untyped.add_sample("raw_reading", {"pin": "a0"}, 512)
            yield untyped

    r = CollectorRegistry()
    r.register(Custom())  # type: ignore[arg-type]
    # the gauge histogram cannot be sent (its buckets would be gauges with the reserved `le`)
    assert Translator(DEVICE).samples(r) == [Sample("raw_reading", 512.0, {"pin": "a0"})]


def test_start_raises_the_mismatch_before_connecting() -> None:
    r = CollectorRegistry()
    Counter("liquid_inference", "n", ["device_id"], registry=r).labels("edge-42").inc()
    # port 9 (discard) on loopback: nothing is dialled, start() stops before the connect
    bridge = RegistryBridge(r, device_id=DEVICE, mqtt_url="mqtt://127.0.0.1:9", hw="pi",
                            fw="1")
    with pytest.raises(DeviceIdMismatch, match=r"liquid_inference_total.*'edge-42'.*'pi-07'"):
        bridge.start()
    assert not bridge.device.connected
    assert bridge.device._thread is None  # no background thread either


def test_the_device_gets_the_bridges_samples_and_the_other_keywords() -> None:
    r = CollectorRegistry()
    Gauge("board_temp_c", "t", ["device_id"], registry=r).labels(DEVICE).set(40)
    bridge = RegistryBridge(r, device_id=DEVICE, mqtt_url="mqtt://127.0.0.1:9", hw="pi",
                            fw="1", interval_s=2.5, labels={"site": "lab"}, ring_size=7)
    assert bridge.device.samples() == [Sample("board_temp_c", 40.0)]
    assert (bridge.device.interval_s, bridge.device.core.labels) == (2.5, {"site": "lab"})
    with pytest.raises(TypeError, match="collect"):
        RegistryBridge(r, device_id=DEVICE, mqtt_url="mqtt://127.0.0.1:9", hw="pi", fw="1",
                       collect=list)


def test_a_failing_collector_is_a_value_error_so_the_device_skips_that_frame_only() -> None:
    class Broken:
        def collect(self) -> Iterator[Metric]:
            raise RuntimeError("sensor bus timeout")

    r = CollectorRegistry()
    Gauge("ok", "o", registry=r).set(1)
    r.register(Broken())  # type: ignore[arg-type]
    bridge = RegistryBridge(r, device_id=DEVICE, mqtt_url="mqtt://127.0.0.1:9", hw="pi",
                            fw="1")
    with pytest.raises(ValueError, match="sensor bus timeout"):
        bridge.collect()


def test_a_series_the_protocol_refuses_stops_start_and_is_left_out_later(
        caplog: pytest.LogCaptureFixture) -> None:
    class Custom:
        def collect(self) -> Iterator[Metric]:
            m = Metric("queue_depth", "q", "gauge")
            m.add_sample("queue_depth", {"le": "5"}, 3)  # `le` is the protocol's own
            yield m
            long_name = Metric("x" * 201, "long", "gauge")
            long_name.add_sample("x" * 201, {}, 1)
            yield long_name

    r = CollectorRegistry()
    Gauge("fine", "f", registry=r).set(2)
    r.register(Custom())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'le' is reserved"):
        Translator(DEVICE).samples(r)
    later = Translator(DEVICE, strict=False)
    with caplog.at_level(logging.ERROR, logger="fleetgate_device.bridge"):
        assert later.samples(r) == [Sample("fine", 2.0)]
        assert later.samples(r) == [Sample("fine", 2.0)]
    assert len(caplog.records) == 2  # one per refused series, once


def test_a_name_that_changes_type_keeps_its_first() -> None:
    class Flipping:
        def __init__(self) -> None:
            self.kind = "gauge"

        def collect(self) -> Iterator[Metric]:
            m = Metric("mode", "m", self.kind)
            m.add_sample("mode", {}, 1)
            yield m

    flipping = Flipping()
    r = CollectorRegistry()
    r.register(flipping)  # type: ignore[arg-type]
    t = Translator(DEVICE, strict=False)
    assert t.samples(r) == [Sample("mode", 1.0, {}, "gauge")]
    flipping.kind = "counter"  # a counter family's sample is named like the family here
    assert t.samples(r) == []
