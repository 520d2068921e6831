"""Profiles: declared metrics the real decoder accepts, values with plausible dynamics."""

from __future__ import annotations

import itertools
import random

import pytest

from device_protocol import Birth, HistogramValue, MetricType, decode_birth, encode_birth
from firmware_sim.profiles import (
    PROFILES,
    Profile,
    Reading,
    UnknownProfileError,
    get_profile,
    parse_profiles,
)

ALL = sorted(PROFILES)


def readings(profile: Profile, seed: int, n: int, elapsed_ms: int = 5000) -> list[list[Reading]]:
    model = profile.new_model(random.Random(seed))
    return [model.read(elapsed_ms) for _ in range(n)]


def series_key(profile: Profile, r: Reading) -> tuple[str, tuple[tuple[str, str], ...]]:
    names = {m.alias: m.name for m in profile.metrics}
    name = names[r.metric] if isinstance(r.metric, int) else r.metric
    return name, r.labels


@pytest.mark.parametrize("name", ALL)
def test_declared_metrics_survive_the_real_birth_decoder(name: str) -> None:
    profile = PROFILES[name]
    birth = Birth(
        boot=1,
        time_ms=1_790_000_000_000,
        platform=profile.platforms[0],
        firmware=profile.firmware,
        labels=profile.birth_labels(),
        interval_ms=5000,
        metrics=profile.metrics,
    )
    assert decode_birth(encode_birth(birth)) == birth


@pytest.mark.parametrize("name", ALL)
def test_profile_mixes_aliased_and_named_metrics(name: str) -> None:
    profile = PROFILES[name]
    (reading,) = readings(profile, seed=1, n=1)
    aliases = {r.metric for r in reading if isinstance(r.metric, int)}
    named = {r.metric for r in reading if isinstance(r.metric, str)}
    assert aliases == {m.alias for m in profile.metrics}  # every declared metric is reported
    assert named, "each profile also sends undeclared gauges by name"
    assert not named & {m.name for m in profile.metrics}
    assert profile.natural_samples() == len(reading)


@pytest.mark.parametrize("name", ALL)
def test_series_are_unique_within_one_reading(name: str) -> None:
    profile = PROFILES[name]
    (reading,) = readings(profile, seed=2, n=1)
    keys = [series_key(profile, r) for r in reading]
    assert len(keys) == len(set(keys))
    for _, labels in keys:
        assert list(labels) == sorted(labels)


@pytest.mark.parametrize("name", ALL)
def test_counters_and_histograms_only_grow_within_a_boot(name: str) -> None:
    profile = PROFILES[name]
    kinds = {m.alias: m.type for m in profile.metrics}
    history = readings(profile, seed=3, n=200)
    for before, after in itertools.pairwise(history):
        for old, new in zip(before, after, strict=True):
            kind = kinds.get(old.metric) if isinstance(old.metric, int) else MetricType.GAUGE
            if kind == MetricType.COUNTER:
                assert isinstance(new.value, float) and isinstance(old.value, float)
                assert new.value >= old.value
            elif kind == MetricType.HISTOGRAM:
                assert isinstance(new.value, HistogramValue)
                assert isinstance(old.value, HistogramValue)
                assert new.value.count >= old.value.count
                assert new.value.sum >= old.value.sum
                buckets = new.value.buckets
                assert all(a <= b for a, b in itertools.pairwise(buckets))
                assert buckets[-1] <= new.value.count
    # Something actually happened: the first counter moved over 200 readings.
    first_counter = next(m.alias for m in profile.metrics if m.type == MetricType.COUNTER)
    values = [r.value for reading in history for r in reading if r.metric == first_counter]
    assert isinstance(values[0], float) and isinstance(values[-1], float)
    assert values[-1] > values[0]


def test_histogram_buckets_match_declared_bounds() -> None:
    profile = PROFILES["liquid-edge"]
    (hist_def,) = [m for m in profile.metrics if m.type == MetricType.HISTOGRAM]
    assert hist_def.bounds == (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
    (reading,) = readings(profile, seed=4, n=1, elapsed_ms=60_000)
    (value,) = [r.value for r in reading if r.metric == hist_def.alias]
    assert isinstance(value, HistogramValue)
    assert len(value.buckets) == len(hist_def.bounds)
    assert value.count > 0
    # Latencies of a few ms to tens of ms: the 1 ms bucket is nearly empty, 1 s holds all.
    assert value.buckets[0] < value.count / 2
    assert value.buckets[-1] == value.count


def test_battery_drains_until_swapped() -> None:
    profile = PROFILES["audio-nets"]
    history = readings(profile, seed=5, n=120, elapsed_ms=60_000)  # two hours
    battery = [
        float(r.value)  # type: ignore[arg-type]  # a gauge: a plain number
        for reading in history
        for r in reading
        if r.metric == "device_battery_percent"
    ]
    drops = sum(1 for a, b in itertools.pairwise(battery) if b < a)
    assert drops >= len(battery) - 3  # falls every minute except at a battery swap
    assert all(0.0 <= b <= 100.0 for b in battery)


def test_same_seed_same_values_other_seed_other_values() -> None:
    profile = PROFILES["tiny-llm"]
    assert readings(profile, 9, 20) == readings(profile, 9, 20)
    assert readings(profile, 9, 20) != readings(profile, 10, 20)


def test_parse_profiles() -> None:
    assert parse_profiles(None) == tuple(PROFILES.values())
    assert parse_profiles("") == tuple(PROFILES.values())
    assert [p.name for p in parse_profiles("tiny-llm, liquid-edge")] == ["tiny-llm", "liquid-edge"]
    assert get_profile("audio-nets").name == "audio-nets"
    with pytest.raises(UnknownProfileError, match="known profiles: audio-nets, liquid-edge"):
        parse_profiles("liquid-edge,nope")
