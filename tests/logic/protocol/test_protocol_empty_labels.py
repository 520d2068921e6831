"""An empty label value is the label being absent (Prometheus's reading of {a=""}).

The label is dropped, the sample kept, and the frame says how many it dropped (the gateway
counts them in fleetgate_labels_dropped_total{reason="empty_value"}). The sample is then
exactly what it would be had the device not sent that label: the birth's label of that name
applies, and two samples that differed only by it are two samples of one series.
"""

from __future__ import annotations

import pytest

from device_protocol import (
    InvalidName,
    RawSample,
    RawTelemetry,
    decode_birth,
    decode_telemetry,
    decode_telemetry_rows,
    resolve_telemetry,
)
from tests.logic.protocol.protocol_payloads import birth_map, pack, telemetry_map


def test_an_empty_label_value_drops_the_label_and_keeps_the_sample() -> None:
    payload = pack(telemetry_map(m=[
        ["cpu_percent", 55.5, 0, {"core": "", "mode": "user"}],
        ["cpu_percent", 12.0, 0, {"core": ""}],
        ["cpu_percent", 1.0, 0, {"core": "1"}],
    ]))
    raw = decode_telemetry(payload)
    assert [s.labels for s in raw.samples] == [(("mode", "user"),), (), (("core", "1"),)]
    assert [s.value for s in raw.samples] == [55.5, 12.0, 1.0]
    assert raw.dropped_labels == 2
    rows = decode_telemetry_rows(payload)
    assert [row[3] for row in rows.rows] == [s.labels for s in raw.samples]
    assert rows.dropped_labels == 2
    assert rows.to_raw() == raw and type(rows).from_raw(raw) == rows


def test_a_frame_without_empty_values_drops_nothing() -> None:
    raw = decode_telemetry(pack(telemetry_map(m=[["cpu_percent", 1.0, 0, {"core": "1"}]])))
    assert raw.dropped_labels == 0
    assert raw == RawTelemetry(7, 0, raw.time_ms, (RawSample("cpu_percent", 1.0, 0,
                                                            (("core", "1"),)),), False)


def test_an_empty_birth_label_is_dropped_from_the_birth() -> None:
    birth = decode_birth(pack(birth_map(labels={"site": "lab-7", "rack": ""})))
    assert birth.labels == (("site", "lab-7"),)
    assert birth.dropped_labels == 1
    assert decode_birth(pack(birth_map())).dropped_labels == 0


def test_a_dropped_sample_label_lets_the_birth_label_of_that_name_apply() -> None:
    # As if the sample had not sent it: {"site": ""} does not erase the birth's site.
    birth = decode_birth(pack(birth_map(labels={"site": "lab-7"})))
    raw = decode_telemetry(pack(telemetry_map(m=[[0, 21.5, 0, {"site": ""}]])))
    (sample,) = resolve_telemetry(raw, birth).samples
    assert sample.labels == (("site", "lab-7"),)


def test_two_samples_that_differ_only_by_an_empty_label_are_one_series_twice() -> None:
    # Kept both, in frame order, as if the device had sent the label-less sample twice: what a
    # receiver does with two values of one series at one timestamp is its own rule. See also
    # tests/logic/test_frame_compiler.py.
    birth = decode_birth(pack(birth_map(labels={})))
    raw = decode_telemetry(pack(telemetry_map(m=[[0, 1.0, 0, {"core": ""}], [0, 2.0]])))
    first, second = resolve_telemetry(raw, birth).samples
    assert (first.name, first.labels, first.timestamp_ms) == (
        second.name, second.labels, second.timestamp_ms)
    assert (first.value, second.value) == (1.0, 2.0)


@pytest.mark.parametrize("value", [None, 1, b"", "x" * 257])
def test_other_bad_values_still_refuse_the_frame(value: object) -> None:
    with pytest.raises(InvalidName, match="invalid label value"):
        decode_telemetry(pack(telemetry_map(m=[["x_metric", 1.0, 0, {"core": value}]])))


def test_an_empty_value_still_needs_a_valid_label_name() -> None:
    with pytest.raises(InvalidName, match="reserved label name"):
        decode_telemetry(pack(telemetry_map(m=[["x_metric", 1.0, 0, {"__name__": ""}]])))
    with pytest.raises(InvalidName, match="invalid label name"):
        decode_birth(pack(birth_map(labels={"a-b": ""})))
