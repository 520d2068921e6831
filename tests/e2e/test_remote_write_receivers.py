"""Bodies built by gateway.remote_write.wire / gateway.remote_write.series, sent with
HttpRemoteWriteClient to a real Prometheus 2.42 and a real VictoriaMetrics 1.79, then read back
through their query APIs.

This is the proof that the hand-written protobuf and the snappy block format are what receivers
accept, and that ``classify`` reads their real error answers correctly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import cramjam
import pytest

from device_protocol.frames import HistogramSample, Sample, Telemetry
from devstack import Prometheus, VictoriaMetrics, wait_for
from gateway.forward.client import (
    Accepted,
    HttpRemoteWriteClient,
    Rejected,
    Retryable,
    SendResult,
)
from gateway.remote_write.series import SeriesEncoder
from gateway.remote_write.wire import (
    STALE_NAN,
    LabelValidationError,
    build_body,
    compress,
    encode_entry,
    encode_labels,
    validate_labels,
)

pytestmark = pytest.mark.e2e

Receiver = Prometheus | VictoriaMetrics
READ_TIMEOUT_S = 15.0


@pytest.fixture(params=["prometheus", "victoria_metrics"])
def receiver(request: pytest.FixtureRequest) -> Receiver:
    service: Receiver = request.getfixturevalue(request.param)
    return service


def recent_ms() -> int:
    # In the past (never the future: one future sample moves Prometheus's head forward and
    # makes every "now" sample too old), yet inside the 5-minute instant-query lookback.
    return int(time.time() * 1000) - 10_000


def send(
    receiver: Receiver, entries: Sequence[bytes], compressor: Callable[[bytes], bytes] = compress
) -> SendResult:
    async def run() -> SendResult:
        client = HttpRemoteWriteClient(receiver.remote_write_url, timeout_s=10.0)
        try:
            return await client.send(compressor(build_body(entries)))
        finally:
            await client.aclose()

    return asyncio.run(run())


def entry(name: str, value: float, ts: int, **labels: str) -> bytes:
    return encode_entry(encode_labels(sorted({"__name__": name, **labels}.items())), value, ts)


def frame(*samples: Sample | HistogramSample) -> Telemetry:
    return Telemetry(
        boot=1, seq=1, time_ms=samples[0].timestamp_ms, samples=samples, historical=False
    )


def read(receiver: Receiver, promql: str, expected_series: int) -> list[dict[str, Any]]:
    """The instant-query result once it holds `expected_series` series."""
    result: list[dict[str, Any]] = []

    def ready() -> bool:
        nonlocal result
        result = receiver.query(promql)
        return len(result) >= expected_series

    wait_for(ready, READ_TIMEOUT_S, interval=0.1, what=f"{receiver.name}: {promql} -> {result}")
    return result


def by_labels(result: list[dict[str, Any]]) -> dict[frozenset[tuple[str, str]], float]:
    return {frozenset(r["metric"].items()): float(r["value"][1]) for r in result}


# --------------------------------------------------------------------------- both receivers


def test_gauges_are_accepted_and_readable(receiver: Receiver) -> None:
    ts = recent_ms()
    labels = (("model", "yolo-v8n"), ("site", "plant-7"))
    telemetry = frame(
        Sample("rw_temp_celsius", labels, 41.5, ts),
        Sample("rw_fps", labels, 29.97, ts),
        Sample("rw_frames_total", (("site", "plant-7"),), 123456789.0, ts),
    )
    encoder = SeriesEncoder(external_labels=[("gateway", "gw-1"), ("site", "default")])

    assert send(receiver, encoder.frame_entries("dev-0001", telemetry)) == Accepted(204)

    result = read(receiver, '{__name__=~"rw_.+", device_id="dev-0001"}', 3)
    common = {"device_id": "dev-0001", "gateway": "gw-1", "site": "plant-7"}
    assert by_labels(result) == {
        frozenset({"__name__": "rw_temp_celsius", "model": "yolo-v8n", **common}.items()): 41.5,
        frozenset({"__name__": "rw_fps", "model": "yolo-v8n", **common}.items()): 29.97,
        frozenset({"__name__": "rw_frames_total", **common}.items()): 123456789.0,
    }


def test_histogram_series_are_readable_and_usable(receiver: Receiver) -> None:
    ts = recent_ms()
    hist = HistogramSample(
        name="rw_inference_seconds",
        labels=(("model", "m1"),),
        count=10.0,
        sum=3.5,
        buckets=((0.1, 2.0), (0.5, 6.0), (1.0, 9.0), (float("inf"), 10.0)),
        timestamp_ms=ts,
    )
    assert send(receiver, SeriesEncoder().frame_entries("dev-h", frame(hist))) == Accepted(204)

    result = read(receiver, '{__name__=~"rw_inference_seconds_.+"}', 6)
    base = {"device_id": "dev-h", "model": "m1"}
    bucket = "rw_inference_seconds_bucket"
    assert by_labels(result) == {
        frozenset({"__name__": bucket, "le": "0.1", **base}.items()): 2.0,
        frozenset({"__name__": bucket, "le": "0.5", **base}.items()): 6.0,
        frozenset({"__name__": bucket, "le": "1.0", **base}.items()): 9.0,
        frozenset({"__name__": bucket, "le": "+Inf", **base}.items()): 10.0,
        frozenset({"__name__": "rw_inference_seconds_sum", **base}.items()): 3.5,
        frozenset({"__name__": "rw_inference_seconds_count", **base}.items()): 10.0,
    }
    # The le labels parse as bucket bounds: the median lies in (0.1, 0.5], interpolated to 0.4.
    (quantile,) = receiver.query(f"histogram_quantile(0.5, {bucket})")
    assert float(quantile["value"][1]) == pytest.approx(0.4)


def test_stale_nan_ends_a_series(receiver: Receiver) -> None:
    ts = recent_ms()
    entries = [
        entry("rw_stale_test", 5.0, ts, case="ended"),
        entry("rw_stale_test", STALE_NAN, ts + 1000, case="ended"),
        entry("rw_stale_test", 5.0, ts, case="control"),
    ]
    assert send(receiver, entries) == Accepted(204)

    # Without the marker both series would be visible for 5 minutes after `ts`.
    result = read(receiver, "rw_stale_test", 1)
    assert [r["metric"]["case"] for r in result] == ["control"]
    # The sample before the marker was stored, the marker only hides it from "now" on.
    before = receiver.query('rw_stale_test{case="ended"}', time=(ts + 500) / 1000)
    assert [float(r["value"][1]) for r in before] == [5.0]


def test_duplicate_timestamp_with_same_value_is_accepted_twice(receiver: Receiver) -> None:
    body = [entry("rw_dup_test", 7.0, recent_ms(), device_id="d")]
    assert send(receiver, body) == Accepted(204)
    assert send(receiver, body) == Accepted(204)

    (result,) = read(receiver, "count_over_time(rw_dup_test[10m])", 1)
    # Prometheus drops the identical duplicate; VictoriaMetrics (no -dedup.minScrapeInterval)
    # stores it again. Either way a resend after a lost 204 is harmless for instant queries.
    stored = {"prometheus": 1.0, "victoria-metrics": 2.0}[receiver.name]
    assert float(result["value"][1]) == stored
    assert [float(r["value"][1]) for r in receiver.query("rw_dup_test")] == [7.0]


def test_only_snappy_block_format_is_accepted(receiver: Receiver) -> None:
    ts = recent_ms()

    def framed(body: bytes) -> bytes:
        return bytes(cramjam.snappy.compress(body))

    for compressor in (framed, lambda body: body):
        refused = send(receiver, [entry("rw_format_test", 1.0, ts, how="wrong")], compressor)
        assert isinstance(refused, Rejected), refused
        assert refused.status == 400 and "snappy" in refused.reason

    assert send(receiver, [entry("rw_format_test", 1.0, ts, how="raw")]) == Accepted(204)
    result = read(receiver, "rw_format_test", 1)
    assert [r["metric"]["how"] for r in result] == ["raw"]


# -------------------------------------------------------------------- receiver-specific rules


def test_prometheus_rejects_samples_beyond_its_out_of_order_window(
    prometheus: Prometheus,
) -> None:
    now = recent_ms()
    assert send(prometheus, [entry("rw_ooo_test", 1.0, now, age="now")]) == Accepted(204)
    # Inside the 30m window: late samples are fine.
    assert send(prometheus, [entry("rw_ooo_test", 2.0, now - 10 * 60_000, age="10m")]) == (
        Accepted(204)
    )

    # Beyond it Prometheus 2.42 answers 500 "too old sample": retrying could never succeed.
    late = [
        entry("rw_ooo_test", 3.0, now, age="with-old"),
        entry("rw_ooo_test", 4.0, now - 2 * 3600_000, age="2h"),
    ]
    result = send(prometheus, late)
    assert isinstance(result, Rejected), result
    assert result.status == 500 and "too old sample" in result.reason

    # One bad sample refuses the whole request: its good sample was not stored either.
    ages = {r["metric"]["age"] for r in read(prometheus, "rw_ooo_test[1h]", 2)}
    assert ages == {"now", "10m"}


def test_prometheus_rejects_a_different_value_at_the_same_timestamp(
    prometheus: Prometheus,
) -> None:
    ts = recent_ms()
    assert send(prometheus, [entry("rw_dup_value_test", 1.0, ts)]) == Accepted(204)
    result = send(prometheus, [entry("rw_dup_value_test", 2.0, ts)])
    assert result == Rejected(400, "HTTP 400: duplicate sample for timestamp")


def test_prometheus_duplicate_label_names_are_a_permanent_500(prometheus: Prometheus) -> None:
    pairs = [("__name__", "rw_dup_label_test"), ("a", "1"), ("a", "2")]
    with pytest.raises(LabelValidationError, match="duplicate"):
        validate_labels(pairs)  # the gateway refuses this before sending...

    # ...because Prometheus would answer 500, which would otherwise mean "retry forever".
    result = send(prometheus, [encode_entry(encode_labels(pairs), 1.0, recent_ms())])
    assert isinstance(result, Rejected), result
    assert result.status == 500 and "not unique" in result.reason


def test_victoria_metrics_accepts_samples_of_any_age(victoria_metrics: VictoriaMetrics) -> None:
    now = recent_ms()
    two_days_ago = now - 2 * 86_400_000
    entries = [entry("rw_old_test", 1.0, now), entry("rw_old_test", 2.0, two_days_ago)]
    assert send(victoria_metrics, entries) == Accepted(204)

    def exported() -> list[int]:
        series = victoria_metrics.export("rw_old_test")
        return sorted(t for s in series for t in s["timestamps"])

    wait_for(lambda: exported() == [two_days_ago, now], READ_TIMEOUT_S, what="old sample stored")


def test_unreachable_receiver_is_retryable(tmp_path: Any) -> None:
    # A stopped receiver (not a mock): the connection is refused, the batch must be kept.
    service = VictoriaMetrics(tmp_path / "vm").start()
    service.stop()
    result = send(service, [entry("rw_down_test", 1.0, recent_ms())])
    assert isinstance(result, Retryable) and result.status is None
    assert "ConnectError" in result.reason
