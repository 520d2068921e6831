"""The compiler's byte-piece path (issue 15): the same entries as the reference encoder for any
labels around __name__, budgets checked once per series and boot, memory per boot not per
series, and births of one firmware sharing their declarations."""

from __future__ import annotations

import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from device_protocol import (
    Birth,
    MetricDef,
    MetricType,
    RawSample,
    RawTelemetry,
    TelemetryRows,
    resolve_telemetry,
)
from gateway.pipeline.births import BirthRegistry
from gateway.pipeline.frame_compiler import FrameCompiler
from gateway.pipeline.series_budget import SeriesBudget
from gateway.remote_write.series import SeriesEncoder

T = 1_790_000_000_000
METRICS = tuple(MetricDef(i, f"m{i}", MetricType.GAUGE) for i in range(6))
label_names = st.sampled_from(["Zone", "AA", "site", "rack", "_x", "device_id", "__name__", "z"])
labels = st.lists(st.tuples(label_names, st.sampled_from(["", "a", "b c"])), max_size=4,
                  unique_by=lambda p: p[0]).map(lambda ps: tuple(sorted(ps)))


def birth(boot: int, birth_labels: tuple[tuple[str, str], ...] = ()) -> Birth:
    return Birth(boot, T, "esp32", "1.0", birth_labels, 10_000, METRICS)


def frame(boot: int, seq: int, aliases: list[int], dts: list[int]) -> TelemetryRows:
    raw = RawTelemetry(boot, seq, T + seq * 1000, tuple(
        RawSample(a, float(seq * 10 + a), dt, ()) for a, dt in zip(aliases, dts, strict=True)),
        False)
    return TelemetryRows.from_raw(raw)


@settings(max_examples=150, deadline=None)
@given(external=labels, birth_labels=labels,
       frames=st.lists(st.lists(st.tuples(st.integers(0, 5), st.sampled_from([0, 0, 5, -5])),
                                min_size=1, max_size=6), min_size=1, max_size=4))
def test_entries_are_the_reference_encoders_for_any_labels_around_the_name(
        external: tuple[tuple[str, str], ...], birth_labels: tuple[tuple[str, str], ...],
        frames: list[list[tuple[int, int]]]) -> None:
    external = tuple((k, v or "e") for k, v in external if k not in ("device_id", "__name__"))
    compiler = FrameCompiler(SeriesEncoder(external))
    reference = SeriesEncoder(external)
    b = birth(7, birth_labels)
    for seq, rows in enumerate(frames):
        aliases = list(dict.fromkeys(a for a, _ in rows))  # one sample per series a frame
        dts = [dict(rows)[a] for a in aliases]
        rows_in = frame(7, seq, aliases, dts)
        expected = reference.frame_entries("dev-1", resolve_telemetry(
            RawTelemetry(7, seq, rows_in.time_ms, tuple(RawSample(*r) for r in rows_in.rows),
                         False), b))
        got = compiler.entries("dev-1", rows_in, b)
        assert sorted(got) == sorted(expected)


def test_the_budget_refuses_a_table_series_once_and_its_samples_every_frame() -> None:
    budget = SeriesBudget(4)
    compiler = FrameCompiler(SeriesEncoder(), budget=budget)
    b = birth(1)
    for seq in range(3):
        got = compiler.entries("d", frame(1, seq, list(range(6)), [0] * 6), b,
                               count_refused=True)
        assert len(got) == 4
    assert budget.series("d") == 4 and budget.refused["d"] == 6
    # learned once per series and boot, for the boot's stale markers
    assert len(compiler.learned) == 4 and all(row[:2] == ("d", 1) for row in compiler.learned)


def test_a_boot_costs_the_same_whatever_its_series_count() -> None:
    """Per-boot state holds no object per series (the per-device cost of a 20-series fleet)."""
    def state_bytes(n_metrics: int) -> int:
        metrics = tuple(MetricDef(i, f"metric_{i}", MetricType.GAUGE) for i in range(n_metrics))
        compiler = FrameCompiler(SeriesEncoder())
        b = Birth(1, T, "esp32", "1.0", (), 10_000, metrics)
        raw = RawTelemetry(1, 0, T, tuple(RawSample(i, 1.0, 0, ()) for i in range(n_metrics)),
                           False)
        compiler.entries("d", TelemetryRows.from_raw(raw), b)
        state = compiler._boots["d", 1]
        return sum(sys.getsizeof(getattr(state, name)) for name in
                   ("head", "tail", "learned", "refused", "extra", "fixed"))
    assert state_bytes(200) - state_bytes(2) < 64  # the learned mask grows by bits, not objects


def test_births_of_one_firmware_share_their_declarations() -> None:
    registry = BirthRegistry()
    first = registry.shared(Birth(1, T, "esp32", "1.0", (("site", "a"),), 10_000,
                                  tuple(MetricDef(i, f"m{i}", MetricType.GAUGE) for i in range(3))))
    second = registry.shared(Birth(2, T + 1, "esp32", "1.0", (("site", "a"),), 10_000,
                                   tuple(MetricDef(i, f"m{i}", MetricType.GAUGE)
                                         for i in range(3))))
    assert second.metrics is first.metrics and second.labels is first.labels
    assert (second.boot, second.time_ms) == (2, T + 1)
    other = registry.shared(Birth(3, T, "esp32", "2.0", (), 10_000, ()))
    assert other.firmware == "2.0" and other.metrics == ()
