"""The fast path gives exactly the entries of the long way (resolve + SeriesEncoder)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tests.support.factories as f
from device_protocol import (
    Birth,
    BirthRequired,
    HistogramValue,
    MetricDef,
    MetricType,
    RawSample,
    RawTelemetry,
    SchemaError,
    TelemetryRows,
    UnknownAlias,
    decode_telemetry_rows,
    resolve_telemetry,
)
from gateway.pipeline.frame_compiler import FrameCompiler
from gateway.remote_write.series import SeriesEncoder
from gateway.remote_write.wire import build_body, decode_write_request, entry_timestamp

BIRTH = f.birth(1)


def rows(*args: object) -> TelemetryRows:
    return TelemetryRows.from_raw(RawTelemetry(*args))  # type: ignore[arg-type]

scalar = st.tuples(st.sampled_from([0, 1, "free_named_gauge"]),
                   st.floats(allow_nan=False, allow_infinity=False),
                   st.integers(-5000, 5000),
                   st.sampled_from([(), (("core", "0"),), (("core", "1"), ("site", "x"))]))


@settings(max_examples=200)
@given(st.lists(scalar, max_size=30), st.integers(1_600_000_000_000, 1_900_000_000_000))
def test_fast_entries_equal_the_long_way(samples: list[tuple], time_ms: int) -> None:
    raw = RawTelemetry(BIRTH.boot, 3, time_ms, tuple(RawSample(*s) for s in samples), False)
    encoder = SeriesEncoder((("region", "eu"),))
    compiler = FrameCompiler(SeriesEncoder((("region", "eu"),)))
    long_way = encoder.frame_entries("dev-1", resolve_telemetry(raw, BIRTH))
    # the long way's entries; sorted by timestamp (stable) if a series goes back in time
    expected = long_way if series_in_time_order(long_way) else sorted(long_way,
                                                                       key=entry_timestamp)
    frame = TelemetryRows.from_raw(raw)
    assert compiler.entries("dev-1", frame, BIRTH) == expected
    assert compiler.entries("dev-1", frame, BIRTH) == expected  # warm cache too
    assert series_in_time_order(expected)


def series_in_time_order(entries: list[bytes]) -> bool:
    newest: dict[str, int] = {}
    for labels, samples in decode_write_request(b"".join(entries)):
        key = repr(sorted(labels.items()))
        for _, ts in samples:
            if newest.get(key, ts) > ts:
                return False
            newest[key] = ts
    return True


def test_histograms_and_far_timestamps_take_the_long_way() -> None:
    raw = RawTelemetry(BIRTH.boot, 1, 1_790_000_000_000, (
        RawSample(2, HistogramValue(4.0, 0.5, (1.0, 2.0, 3.0)), 0, ()),
        RawSample(0, 1.0, 0, ()),
        RawSample(0, 2.0, -1_789_000_000_000, ()),  # 1971: a 5-byte varint timestamp
    ), False)
    expected = SeriesEncoder().frame_entries("d", resolve_telemetry(raw, BIRTH))
    frame = TelemetryRows.from_raw(raw)
    assert FrameCompiler(SeriesEncoder()).entries("d", frame, BIRTH) == [expected[-1],
                                                                        *expected[:-1]]


def test_samples_with_time_offsets_come_out_in_timestamp_order_with_the_frames_span() -> None:
    # issue 11, finding 8: dt +500 then -500 of one series was sent in that order
    raw = RawTelemetry(BIRTH.boot, 1, 1_790_000_000_000, (
        RawSample(0, 1.0, 500, ()), RawSample(0, 2.0, -500, ()), RawSample(1, 3.0, 0, ())),
        False)
    out = FrameCompiler(SeriesEncoder()).entries("d", TelemetryRows.from_raw(raw), BIRTH)
    assert [entry_timestamp(e) for e in out] == [1_789_999_999_500, 1_790_000_000_000,
                                                 1_790_000_000_500]
    assert (out.device, out.first_ms, out.last_ms) == ("d", 1_789_999_999_500,
                                                       1_790_000_000_500)
    plain = RawTelemetry(BIRTH.boot, 2, 1_790_000_001_000, (RawSample(0, 1.0, 0, ()),), False)
    out = FrameCompiler(SeriesEncoder()).entries("d", TelemetryRows.from_raw(plain), BIRTH)
    assert (out.device, out.first_ms, out.last_ms) == ("d", 1_790_000_001_000,
                                                       1_790_000_001_000)


def test_it_raises_what_resolve_raises() -> None:
    compiler = FrameCompiler(SeriesEncoder())
    with pytest.raises(BirthRequired):
        compiler.entries("d", rows(999, 0, 1, (), False), BIRTH)
    with pytest.raises(BirthRequired):
        compiler.entries("d", rows(BIRTH.boot, 0, 1, (), False), None)
    with pytest.raises(UnknownAlias):
        compiler.entries("d", rows(BIRTH.boot, 0, 1, (RawSample(42, 1.0, 0, ()),),
                                           False), BIRTH)
    with pytest.raises(SchemaError):  # a plain number for a declared histogram
        compiler.entries("d", rows(BIRTH.boot, 0, 1, (RawSample(2, 1.0, 0, ()),),
                                           False), BIRTH)


def test_a_new_birth_for_the_same_boot_replaces_the_learned_series() -> None:
    compiler = FrameCompiler(SeriesEncoder())
    raw = RawTelemetry(BIRTH.boot, 0, 1_790_000_000_000, (RawSample(0, 1.0, 0, ()),), False)
    first = compiler.entries("d", TelemetryRows.from_raw(raw), BIRTH)
    renamed = Birth(BIRTH.boot, BIRTH.time_ms, BIRTH.platform, BIRTH.firmware, BIRTH.labels,
                    BIRTH.interval_ms, (MetricDef(0, "renamed_metric", MetricType.GAUGE),))
    second = compiler.entries("d", TelemetryRows.from_raw(raw), renamed)
    assert first != second and b"renamed_metric" in second[0]


def test_the_series_cap_clears_and_relearns() -> None:
    compiler = FrameCompiler(SeriesEncoder(), max_series=2)
    raw = RawTelemetry(BIRTH.boot, 0, 1_790_000_000_000, tuple(
        RawSample("m", float(i), 0, (("k", str(i)),)) for i in range(5)), False)
    expected = SeriesEncoder().frame_entries("d", resolve_telemetry(raw, BIRTH))
    assert compiler.entries("d", TelemetryRows.from_raw(raw), BIRTH) == expected


def test_boots_and_their_births_are_bounded_and_forgettable() -> None:
    compiler = FrameCompiler(SeriesEncoder(), max_boots=5)
    for i in range(40):  # 40 boots of 40 devices, one series each
        birth = f.birth(i)
        raw = RawTelemetry(birth.boot, 0, 1_790_000_000_000, (RawSample(0, 1.0, 0, ()),), False)
        expected = SeriesEncoder().frame_entries(f"d{i}", resolve_telemetry(raw, birth))
        assert compiler.entries(f"d{i}", TelemetryRows.from_raw(raw), birth) == expected
        assert len(compiler._boots) <= 5
    compiler.forget("d39", f.birth(39).boot)
    assert ("d39", f.birth(39).boot) not in compiler._boots


def test_samples_that_differ_only_by_an_empty_label_are_one_series_in_frame_order() -> None:
    # {"core": ""} is no label core (issue 11, 12a): the decoder drops it and keeps the sample,
    # which is then the label-less sample sent twice. Both are forwarded, in frame order (what
    # a receiver keeps of two values at one timestamp is its rule).
    payload = msgpack.packb({"v": 1, "b": BIRTH.boot, "s": 0, "t": 1_790_000_000_000, "m": [
        ["free_named_gauge", 1.0, 0, {"core": ""}], ["free_named_gauge", 2.0]]})
    frame = decode_telemetry_rows(payload)
    assert frame.dropped_labels == 1
    entries = FrameCompiler(SeriesEncoder()).entries("dev-1", frame, BIRTH)
    decoded = decode_write_request(build_body(entries))
    labels = {"__name__": "free_named_gauge", "device_id": "dev-1", **dict(BIRTH.labels)}
    assert decoded == [(labels, [(1.0, 1_790_000_000_000)]),
                       (labels, [(2.0, 1_790_000_000_000)])]
