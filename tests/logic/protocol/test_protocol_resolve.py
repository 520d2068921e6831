"""resolve_telemetry: aliases, names, histograms and labels against the birth of the same boot."""

from __future__ import annotations

import gc
import math
import pickle
from dataclasses import FrozenInstanceError, replace

import pytest

from device_protocol import (
    Birth,
    BirthRequired,
    HistogramSample,
    HistogramValue,
    NeedsBirth,
    RawSample,
    RawTelemetry,
    Sample,
    SchemaError,
    Telemetry,
    UnknownAlias,
    decode_birth,
    decode_telemetry,
    resolve_telemetry,
)
from device_protocol import resolve as resolve_module
from tests.logic.protocol.protocol_payloads import BOOT, T0, birth_map, pack, telemetry_map


def resolve(birth: Birth | None, **overrides: object) -> tuple[Sample | HistogramSample, ...]:
    raw = decode_telemetry(pack(telemetry_map(**overrides)))
    return resolve_telemetry(raw, birth).samples


def test_aliases_names_and_offsets(birth: Birth) -> None:
    samples = resolve(birth, m=[[0, 21.5], [1, 7, 5000], ["undeclared_gauge", 3.25, -1000]])
    site = (("site", "lab-7"),)
    assert samples == (
        Sample("temp_celsius", site, 21.5, T0),
        Sample("inferences_total", site, 7.0, T0 + 5000),
        Sample("undeclared_gauge", site, 3.25, T0 - 1000),
    )


def test_declared_name_may_replace_its_alias(birth: Birth) -> None:
    by_alias = resolve(birth, m=[[2, [4, 0.5, [1, 3, 4]]]])
    by_name = resolve(birth, m=[["latency_seconds", [4, 0.5, [1, 3, 4]]]])
    assert by_alias == by_name


def test_histogram_buckets_end_with_inf(birth: Birth) -> None:
    (hist,) = resolve(birth, m=[[2, [4, 0.5, [1, 3, 4]], 10]])
    assert hist == HistogramSample(
        "latency_seconds",
        (("site", "lab-7"),),
        4.0,
        0.5,
        ((0.01, 1.0), (0.1, 3.0), (1.0, 4.0), (math.inf, 4.0)),
        T0 + 10,
    )


def test_sample_labels_overlay_birth_labels_sorted(birth: Birth) -> None:
    labels = {"site": "field-2", "core": "1", "zone": "a"}
    (sample,) = resolve(birth, m=[[0, 1.0, 0, labels]])
    assert sample.labels == (("core", "1"), ("site", "field-2"), ("zone", "a"))


def test_no_birth_labels() -> None:
    birth = decode_birth(pack(birth_map(labels={})))
    (sample,) = resolve(birth, m=[[0, 1.0, 0, {"core": "1"}]])
    assert sample.labels == (("core", "1"),)


def test_birth_required() -> None:
    raw = decode_telemetry(pack(telemetry_map()))
    with pytest.raises(BirthRequired, match="birth required"):
        resolve_telemetry(raw, None)
    other_boot = decode_birth(pack(birth_map(b=BOOT + 1)))
    with pytest.raises(BirthRequired) as caught:
        resolve_telemetry(raw, other_boot)
    assert isinstance(caught.value, NeedsBirth)
    assert str(BOOT + 1) in caught.value.detail


def test_unknown_alias(birth: Birth) -> None:
    with pytest.raises(UnknownAlias, match="unknown alias"):
        resolve(birth, m=[[0, 1.0], [3, 1.0]])


@pytest.mark.parametrize("metric", [0, "temp_celsius", "undeclared_histogram"])
def test_histogram_value_for_a_non_histogram(birth: Birth, metric: int | str) -> None:
    with pytest.raises(UnknownAlias, match="unknown histogram"):
        resolve(birth, m=[[metric, [1, 0.5, [0, 1, 1]]]])


@pytest.mark.parametrize("metric", [2, "latency_seconds"])
def test_scalar_value_for_a_histogram(birth: Birth, metric: int | str) -> None:
    with pytest.raises(SchemaError, match="bad value type"):
        resolve(birth, m=[[metric, 1.0]])


def test_bucket_count_must_match_bounds(birth: Birth) -> None:
    with pytest.raises(SchemaError, match="bucket count mismatch"):
        resolve(birth, m=[[2, [4, 0.5, [1, 4]]]])


def test_frame_fields_are_carried(birth: Birth) -> None:
    raw = decode_telemetry(pack(telemetry_map(s=41, h=True, m=[])))
    telemetry = resolve_telemetry(raw, birth)
    assert (telemetry.boot, telemetry.seq, telemetry.time_ms) == (BOOT, 41, T0)
    assert telemetry.historical is True
    assert telemetry.samples == ()


def test_new_birth_for_the_same_boot_takes_effect(birth: Birth) -> None:
    raw = decode_telemetry(pack(telemetry_map(m=[[0, 1.0]])))
    assert resolve_telemetry(raw, birth).samples[0].name == "temp_celsius"
    renamed = decode_birth(pack(birth_map(metrics=[[0, "temp_kelvin", "gauge"]])))
    assert resolve_telemetry(raw, renamed).samples[0].name == "temp_kelvin"
    assert resolve_telemetry(raw, birth).samples[0].name == "temp_celsius"


def test_alias_tables_die_with_their_birth() -> None:
    raw = decode_telemetry(pack(telemetry_map()))
    before = len(resolve_module._indexes)
    births = [decode_birth(pack(birth_map())) for _ in range(50)]
    for b in births:
        resolve_telemetry(raw, b)
    assert len(resolve_module._indexes) >= before + 50
    del births, b
    gc.collect()
    assert len(resolve_module._indexes) <= before


# ------------------------------------------------- fast-built frames behave like ordinary ones


def test_decoded_and_resolved_samples_are_ordinary_frozen_frames(birth: Birth) -> None:
    raw = decode_telemetry(pack(telemetry_map(m=[[0, 1.5, 3, {"core": "1"}]])))
    raw_sample = raw.samples[0]
    expected_raw = RawSample(0, 1.5, 3, (("core", "1"),))
    assert type(raw_sample) is RawSample
    assert raw_sample == expected_raw
    assert hash(raw_sample) == hash(expected_raw)
    assert repr(raw_sample) == repr(expected_raw)
    assert replace(raw_sample, dt_ms=4) == RawSample(0, 1.5, 4, (("core", "1"),))
    assert pickle.loads(pickle.dumps(raw_sample)) == expected_raw
    with pytest.raises(FrozenInstanceError):
        raw_sample.value = 2.0  # type: ignore[misc]

    sample = resolve_telemetry(raw, birth).samples[0]
    expected = Sample("temp_celsius", (("core", "1"), ("site", "lab-7")), 1.5, T0 + 3)
    assert type(sample) is Sample
    assert sample == expected
    assert hash(sample) == hash(expected)
    assert repr(sample) == repr(expected)
    assert pickle.loads(pickle.dumps(sample)) == expected
    with pytest.raises(FrozenInstanceError):
        sample.name = "other"  # type: ignore[misc]


def test_fast_built_frames_of_every_kind_are_ordinary(birth: Birth) -> None:
    raw = decode_telemetry(pack(telemetry_map(h=True, m=[[2, [4, 0.5, [1, 3, 4]]]])))
    histogram_value = HistogramValue(4.0, 0.5, (1.0, 3.0, 4.0))
    assert type(raw) is RawTelemetry
    assert raw == RawTelemetry(BOOT, 0, T0, (RawSample(2, histogram_value, 0, ()),), True)
    assert type(raw.samples[0].value) is HistogramValue
    assert hash(raw) == hash(RawTelemetry(BOOT, 0, T0, raw.samples, True))
    telemetry = resolve_telemetry(raw, birth)
    assert type(telemetry) is Telemetry
    assert type(telemetry.samples[0]) is HistogramSample
    assert pickle.loads(pickle.dumps(telemetry)) == telemetry
    with pytest.raises(FrozenInstanceError):
        telemetry.seq = 1  # type: ignore[misc]
