"""SeriesEncoder: label sets, external labels, histogram expansion, le formatting, caching."""

from __future__ import annotations

import math
import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.utils import floatToGoString

from device_protocol import decode_birth, resolve_telemetry
from device_protocol.frames import (
    Birth,
    HistogramSample,
    HistogramValue,
    Labels,
    RawSample,
    RawTelemetry,
    Sample,
    Telemetry,
)
from gateway.remote_write.series import SeriesEncoder, format_le
from gateway.remote_write.wire import (
    STALE_NAN,
    LabelValidationError,
    build_body,
    decode_write_request,
    encode_entry,
    encode_labels,
    is_stale_nan,
)

T0 = 1_700_000_000_000
INF = math.inf

Decoded = list[tuple[dict[str, str], list[tuple[float, int]]]]


def frame(*samples: Sample | HistogramSample) -> Telemetry:
    return Telemetry(boot=1, seq=1, time_ms=T0, samples=samples, historical=False)


def decode(entries: list[bytes]) -> Decoded:
    return decode_write_request(build_body(entries))


def test_gauge_sample_becomes_one_series_with_device_id() -> None:
    labels: Labels = (("model", "yolo"), ("site", "s1"))
    entries = SeriesEncoder().frame_entries("dev-1", frame(Sample("temp_c", labels, 41.5, T0)))
    assert decode(entries) == [
        (
            {"__name__": "temp_c", "device_id": "dev-1", "model": "yolo", "site": "s1"},
            [(41.5, T0)],
        )
    ]


def test_entries_are_byte_identical_to_the_reference_encoder() -> None:
    # labels sorted by name, __name__ first: what receivers expect
    enc = SeriesEncoder(external_labels=[("gateway", "gw1")])
    entries = enc.frame_entries("d", frame(Sample("up", (("zone", "z"),), 1.0, T0 + 7)))
    labels = [("__name__", "up"), ("device_id", "d"), ("gateway", "gw1"), ("zone", "z")]
    assert entries == [encode_entry(encode_labels(labels), 1.0, T0 + 7)]


def test_external_labels_are_added_but_never_override_series_labels() -> None:
    enc = SeriesEncoder(external_labels=[("site", "default"), ("gateway", "gw1")])
    entries = enc.frame_entries(
        "d",
        frame(
            Sample("a", (("site", "plant-7"),), 1.0, T0),
            Sample("b", (), 2.0, T0),
        ),
    )
    assert [labels for labels, _ in decode(entries)] == [
        {"__name__": "a", "device_id": "d", "gateway": "gw1", "site": "plant-7"},
        {"__name__": "b", "device_id": "d", "gateway": "gw1", "site": "default"},
    ]


def test_gateway_owns_name_and_device_id_and_empty_values_mean_absent() -> None:
    enc = SeriesEncoder(external_labels=[("site", "default")])
    spoof: Labels = (("__name__", "evil"), ("device_id", "other-device"), ("site", ""))
    ((labels, _),) = decode(enc.frame_entries("dev-1", frame(Sample("temp", spoof, 1.0, T0))))
    assert labels == {"__name__": "temp", "device_id": "dev-1", "site": "default"}


@pytest.mark.parametrize(
    "external",
    [[("device_id", "x")], [("__name__", "x")], [("bad-name", "x")], [("site", "")]],
)
def test_invalid_external_labels_fail_at_construction(external: list[tuple[str, str]]) -> None:
    with pytest.raises(LabelValidationError):
        SeriesEncoder(external_labels=external)


def test_invalid_series_labels_raise_naming_device_and_metric() -> None:
    enc = SeriesEncoder()
    with pytest.raises(LabelValidationError, match=r"device 'dev-9', metric 'temp'.*bad-label"):
        enc.frame_entries("dev-9", frame(Sample("temp", (("bad-label", "v"),), 1.0, T0)))
    with pytest.raises(LabelValidationError, match="invalid metric name"):
        enc.frame_entries("dev-9", frame(Sample("9lives", (), 1.0, T0)))


def test_histogram_expands_to_buckets_sum_and_count() -> None:
    hist = HistogramSample(
        name="infer_seconds",
        labels=(("model", "m"),),
        count=10.0,
        sum=1.25,
        buckets=((0.001, 1.0), (0.5, 4.0), (1.0, 7.0), (10.0, 9.0), (INF, 10.0)),
        timestamp_ms=T0,
    )
    enc = SeriesEncoder()
    entries = enc.frame_entries("d", frame(hist))
    assert enc.sample_count(frame(hist)) == len(entries) == 7
    base = {"device_id": "d", "model": "m"}
    assert decode(entries) == [
        ({"__name__": "infer_seconds_bucket", "le": "0.001", **base}, [(1.0, T0)]),
        ({"__name__": "infer_seconds_bucket", "le": "0.5", **base}, [(4.0, T0)]),
        ({"__name__": "infer_seconds_bucket", "le": "1.0", **base}, [(7.0, T0)]),
        ({"__name__": "infer_seconds_bucket", "le": "10.0", **base}, [(9.0, T0)]),
        ({"__name__": "infer_seconds_bucket", "le": "+Inf", **base}, [(10.0, T0)]),
        ({"__name__": "infer_seconds_sum", **base}, [(1.25, T0)]),
        ({"__name__": "infer_seconds_count", **base}, [(10.0, T0)]),
    ]


def test_histogram_without_inf_bucket_gets_one_from_count() -> None:
    hist = HistogramSample("h", (), 3.0, 0.5, ((1.0, 2.0),), T0)
    enc = SeriesEncoder()
    entries = enc.frame_entries("d", frame(hist))
    assert enc.sample_count(frame(hist)) == len(entries) == 4
    decoded = decode(entries)
    assert [(lbls.get("le"), samples) for lbls, samples in decoded[:2]] == [
        ("1.0", [(2.0, T0)]),
        ("+Inf", [(3.0, T0)]),
    ]


def test_histogram_le_overrides_a_sample_le_label() -> None:
    hist = HistogramSample("h", (("le", "oops"),), 1.0, 1.0, ((INF, 1.0),), T0)
    decoded = decode(SeriesEncoder().frame_entries("d", frame(hist)))
    assert decoded[0][0]["le"] == "+Inf"
    # _sum/_count keep the device's label: only _bucket's le belongs to the encoder
    assert decoded[1][0]["le"] == "oops"


@pytest.mark.parametrize(
    ("bound", "text"),
    [
        (0.001, "0.001"),
        (1.0, "1.0"),
        (10, "10.0"),
        (1e-05, "1e-05"),
        (0.25, "0.25"),
        (2.5, "2.5"),
        (1_000_000.0, "1e+06"),
        (1_234_567.0, "1.234567e+06"),
        (INF, "+Inf"),
        (-INF, "-Inf"),
        (-1.5, "-1.5"),
    ],
)
def test_le_formatting_matches_client_libraries(bound: float, text: str) -> None:
    assert format_le(bound) == text


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_le_formatting_agrees_with_prometheus_client(bound: float) -> None:
    assert format_le(bound) == floatToGoString(bound)


def test_stale_nan_survives_encoding() -> None:
    entries = SeriesEncoder().frame_entries("d", frame(Sample("x", (), STALE_NAN, T0)))
    ((_, [(value, _)]),) = decode(entries)
    assert is_stale_nan(value)


@pytest.mark.parametrize("ts", [0, 1, -1, 1 << 34, 1 << 42, (1 << 63) - 1, -(1 << 63)])
def test_timestamps_outside_the_fast_path_encode_correctly(ts: int) -> None:
    hist = HistogramSample("h", (), 1.0, 2.0, ((INF, 1.0),), ts)
    enc = SeriesEncoder()
    for _ in range(2):  # cold and warm cache
        entries = enc.frame_entries("d", frame(Sample("x", (), 1.0, ts), hist))
        assert [samples for _, samples in decode(entries)] == [[(1.0, ts)]] * 2 + [
            [(2.0, ts)],
            [(1.0, ts)],
        ]
        assert entries[0] == encode_entry(
            encode_labels([("__name__", "x"), ("device_id", "d")]), 1.0, ts
        )


def test_mixed_timestamps_within_a_frame() -> None:
    samples = [Sample("x", (("i", str(i)),), float(i), T0 + (i % 3)) for i in range(9)]
    decoded = decode(SeriesEncoder().frame_entries("d", frame(*samples)))
    assert [(lbls["i"], s) for lbls, s in decoded] == [
        (str(i), [(float(i), T0 + (i % 3))]) for i in range(9)
    ]


def test_cache_eviction_keeps_results_correct() -> None:
    def telemetry(round_: int) -> Telemetry:
        gauges = [
            Sample(f"m{i}", (("k", str(i % 4)),), float(round_ * 100 + i), T0) for i in range(7)
        ]
        hist = HistogramSample("h", (), 2.0, 3.0, ((1.0, 1.0), (INF, 2.0)), T0 + round_)
        return frame(*gauges, hist)

    small = SeriesEncoder(external_labels=[("g", "1")], cache_size=3)
    for round_ in range(4):
        reference = SeriesEncoder(external_labels=[("g", "1")])  # cold, never evicts
        for device in ("a", "b"):
            got = small.frame_entries(device, telemetry(round_))
            assert got == reference.frame_entries(device, telemetry(round_))
    assert small.cached_series <= 4  # the last histogram (4 series) alone may exceed the bound


def test_cache_holds_each_series_once() -> None:
    enc = SeriesEncoder()
    for seq in range(5):
        enc.frame_entries(
            "d", frame(Sample("a", (), float(seq), T0 + seq), Sample("b", (), 1.0, T0))
        )
    assert enc.cached_series == 2
    enc.frame_entries("other", frame(Sample("a", (), 1.0, T0)))
    assert enc.cached_series == 3


def test_info_entry() -> None:
    birth = Birth(
        boot=3,
        time_ms=T0,
        platform="jetson-orin",
        firmware="2.4.1",
        labels=(("platform", "ignored"), ("site", "s1")),
        interval_ms=1000,
        metrics=(),
    )
    entry = SeriesEncoder(external_labels=[("gateway", "gw")]).info_entry("dev-1", birth, T0)
    assert decode([entry]) == [
        (
            {
                "__name__": "fleet_device_info",
                "device_id": "dev-1",
                "firmware": "2.4.1",
                "gateway": "gw",
                "platform": "jetson-orin",
                "site": "s1",
            },
            [(1.0, T0)],
        )
    ]


def test_not_a_sample_is_a_type_error() -> None:
    bogus = Telemetry(boot=1, seq=1, time_ms=T0, samples=("x",), historical=False)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        SeriesEncoder().frame_entries("d", bogus)


def test_negative_zero_keeps_its_sign_bit() -> None:
    ((_, [(value, _)]),) = decode(
        SeriesEncoder().frame_entries("d", frame(Sample("x", (), -0.0, T0)))
    )
    assert struct.pack("<d", value) == struct.pack("<d", -0.0)


def test_cache_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SeriesEncoder(cache_size=0)


# --------------------------------------------- numbers made label values: float32 bounds (issue 11)


def _birth_bytes(*bounds: bytes) -> bytes:
    """A birth as C firmware packs it: the histogram's bounds encoded byte by byte."""
    birth = {"v": 1, "b": 1, "t": T0, "hw": "mcu", "fw": "1", "interval": 1000,
             "metrics": [[0, "infer_seconds", "histogram", ["BOUNDS"]]]}
    payload = msgpack.packb(birth)
    return payload.replace(b"\x91\xa6BOUNDS", bytes((0x90 + len(bounds),)) + b"".join(bounds))


def _f32(value: float) -> bytes:
    return b"\xca" + struct.pack(">f", value)


def _f64(value: float) -> bytes:
    return b"\xcb" + struct.pack(">d", value)


def _le_labels(birth_payload: bytes) -> list[str]:
    birth = decode_birth(birth_payload)
    counts = tuple(float(i) for i in range(len(birth.metrics[0].bounds)))
    telemetry = RawTelemetry(1, 0, T0, (RawSample(0, HistogramValue(9.0, 1.0, counts), 0, ()),),
                             False)
    entries = SeriesEncoder().frame_entries("d", resolve_telemetry(telemetry, birth))
    return [labels["le"] for labels, _ in decode(entries) if "le" in labels]


def test_float32_bounds_make_the_le_labels_a_python_exporter_makes() -> None:
    # A firmware's `float bounds[] = {0.005f, ...}` packed as msgpack float32. Read as float64,
    # 0.005f is 0.004999999888241291: the label must still be the one prometheus_client writes
    # for Histogram(buckets=[0.005, ...]), so a device moved from a Python exporter keeps its
    # series.
    intended = [3e-05, 0.005, 0.01, 0.1, 1.0, 2.5, 10.0, 1_000_000.0]
    expected = [floatToGoString(b) for b in intended] + ["+Inf"]
    assert expected[:3] == ["3e-05", "0.005", "0.01"] and "1.0" in expected
    assert _le_labels(_birth_bytes(*(_f32(b) for b in intended))) == expected
    assert _le_labels(_birth_bytes(*(_f64(b) for b in intended))) == expected


def test_a_bound_keeps_its_series_across_a_precision_change_when_its_decimal_is_the_same() -> None:
    # A new firmware that sends its bounds as float64 instead of float32 (or back) keeps its
    # `le` series when the shortest decimal is the same at both precisions (any bound of up to
    # 6 significant digits); a bound that needs more digits than float32 has becomes a new
    # series, as it would in a Python exporter whose bucket changed from 0.12345679 to
    # 0.123456789.
    assert _le_labels(_birth_bytes(_f32(0.123456), _f32(0.3))) == \
        _le_labels(_birth_bytes(_f64(0.123456), _f64(0.3))) == ["0.123456", "0.3", "+Inf"]
    assert _le_labels(_birth_bytes(_f32(0.123456789))) == ["0.12345679", "+Inf"]
    assert _le_labels(_birth_bytes(_f64(0.123456789))) == ["0.123456789", "+Inf"]
    # A float64 bound is labelled at float64 precision, even when it is exactly a float32.
    assert _le_labels(_birth_bytes(_f64(0.004999999888241291))) == ["0.004999999888241291",
                                                                     "+Inf"]


def test_an_upper_case_external_label_sorts_before_the_metric_name() -> None:
    """Found by the spec suite: `Az` is a valid label name and sorts before `__name__` in byte
    order; the gateway refused to start with it ("unsorted label name")."""
    encoder = SeriesEncoder((("Az", "b"),))
    labels = [name for name, _ in decode_write_request(
        encoder.entry(encoder.series_prefix("dev", "t", ()), 1.0, 1_790_000_000_000))[0][0]
        .items()]
    assert labels == sorted(labels) == ["Az", "__name__", "device_id"]
