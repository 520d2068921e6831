"""Per-device series budget, alone and as FrameCompiler applies it to decoded frames.

Entries are decoded back into series with gateway.remote_write.wire.decode_write_request, so the
tests see what a receiver would get.
"""

from __future__ import annotations

import pytest

from device_protocol import HistogramValue, Labels, MetricDef, MetricType, RawSample, TelemetryRows
from gateway.pipeline.frame_compiler import FrameCompiler
from gateway.pipeline.series_budget import SeriesBudget
from gateway.remote_write.series import SeriesEncoder
from gateway.remote_write.wire import decode_write_request
from tests.support.factories import decoded_frame, fixed_birth

T0 = 1_790_000_000_000
BOUNDS = (0.1, 1.0, 10.0)
HISTOGRAM_WIDTH = len(BOUNDS) + 3  # a bucket per bound, the +Inf bucket, _sum, _count
METRICS = (
    MetricDef(0, "temperature_celsius", MetricType.GAUGE),
    MetricDef(1, "inferences_total", MetricType.COUNTER),
    MetricDef(2, "latency_seconds", MetricType.HISTOGRAM, BOUNDS),
)
BIRTH = fixed_birth(1, T0, METRICS)


def frame(*samples: RawSample, seq: int = 0, boot: int = 1, time_ms: int = T0) -> TelemetryRows:
    return decoded_frame(boot, seq, time_ms, samples)


def gauge(core: int, value: float = 1.0, dt_ms: int = 0) -> RawSample:
    return RawSample(0, value, dt_ms, (("core", str(core)),))


def histogram(count: float = 3.0, labels: Labels = ()) -> RawSample:
    return RawSample(2, HistogramValue(count, 0.5, (1.0, 2.0, count)), 0, labels)


def compiler(limit: int) -> FrameCompiler:
    return FrameCompiler(SeriesEncoder(), budget=SeriesBudget(limit))


def series_of(entries: list[bytes]) -> list[tuple[str, str | None, str | None]]:
    """(metric name, core label, le label) per entry, in order."""
    decoded = decode_write_request(b"".join(entries))
    return [(labels["__name__"], labels.get("core"), labels.get("le")) for labels, _ in decoded]


# ------------------------------------------------------------------ SeriesBudget alone


def test_the_budget_admits_up_to_its_limit_per_device() -> None:
    budget = SeriesBudget(3)
    assert [budget.admit("d", f"m{i}", ()) for i in range(5)] == [True] * 3 + [False] * 2
    assert budget.admit("d", "m0", ())  # a known series always passes
    assert budget.admitted("d", "m2", ()) and not budget.admitted("d", "m3", ())
    assert budget.admit("d", "m0", (("core", "1"),)) is False  # labels make another series
    assert budget.series("d") == 3
    assert budget.admit("e", "m9", ())  # every device has its own budget
    assert (budget.series("e"), budget.series("never-seen")) == (1, 0)
    assert not budget.admitted("never-seen", "m0", ())


def test_a_wide_series_takes_its_width_or_nothing() -> None:
    budget = SeriesBudget(6)
    assert budget.admit("d", "g", ())
    assert budget.admit("d", "h", (), width=6) is False  # 1 + 6 > 6: nothing taken
    assert budget.series("d") == 1
    assert budget.admit("d", "h2", (), width=5)
    assert budget.series("d") == 6
    assert budget.admit("d", "h2", (), width=5)  # known


def test_refused_samples_are_counted_and_forget_clears_the_device() -> None:
    budget = SeriesBudget(1)
    assert not budget.over("d")
    budget.count_refused("d", 3)
    budget.count_refused("d", 2)
    assert budget.refused == {"d": 5} and budget.over("d")
    budget.admit("d", "m", ())
    budget.forget("d")
    assert (budget.series("d"), budget.over("d"), budget.refused) == (0, False, {})
    assert budget.admit("d", "other", ())
    budget.forget("unknown")  # harmless


def test_a_budget_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        SeriesBudget(0)


# ------------------------------------------------------------------ through FrameCompiler


def test_a_devices_first_n_series_pass_and_the_rest_are_dropped_and_counted() -> None:
    fc = compiler(3)
    entries = fc.entries("d", frame(*(gauge(core) for core in range(5))), BIRTH,
                         count_refused=True)
    assert series_of(entries) == [("temperature_celsius", str(c), None) for c in range(3)]
    assert fc.budget.refused == {"d": 2}
    assert fc.budget.series("d") == 3 and fc.budget.over("d")


def test_known_series_keep_passing_once_the_budget_is_full() -> None:
    fc = compiler(3)
    fc.entries("d", frame(gauge(0), gauge(1), gauge(2)), BIRTH, count_refused=True)
    entries = fc.entries("d", frame(gauge(9), gauge(2, 5.0), gauge(0, 6.0, dt_ms=-5), seq=1),
                         BIRTH, count_refused=True)
    decoded = decode_write_request(b"".join(entries))
    assert [(labels["core"], samples) for labels, samples in decoded] == [
        ("2", [(5.0, T0)]), ("0", [(6.0, T0 - 5)])]
    assert fc.budget.refused == {"d": 1}


def test_samples_keep_their_order_around_refused_ones() -> None:
    fc = compiler(2)
    entries = fc.entries("d", frame(gauge(0, 1.0), gauge(1, 2.0), gauge(2, 3.0),
                                    gauge(0, 4.0, dt_ms=1)), BIRTH, count_refused=True)
    values = [(labels["core"], samples[0][0])
              for labels, samples in decode_write_request(b"".join(entries))]
    assert values == [("0", 1.0), ("1", 2.0), ("0", 4.0)]
    assert fc.budget.refused == {"d": 1}


def test_recompiling_a_frame_gives_the_same_entries_and_counts_nothing_more() -> None:
    fc = compiler(2 + HISTOGRAM_WIDTH)
    raw = frame(gauge(0), histogram(), gauge(1), gauge(2), histogram(labels=(("core", "7"),)),
                RawSample(1, 4.0, 0, ()))
    at_ingest = fc.entries("d", raw, BIRTH, count_refused=True)
    assert fc.budget.refused == {"d": 3}
    for _ in range(2):  # a forwarder re-reads the frame, maybe more than once
        assert fc.entries("d", raw, BIRTH) == at_ingest
        assert fc.entries("d", raw, BIRTH, count_refused=False) == at_ingest
    assert fc.budget.refused == {"d": 3}
    assert fc.budget.series("d") == 2 + HISTOGRAM_WIDTH


def test_a_histogram_takes_a_slot_per_bucket_plus_inf_sum_and_count() -> None:
    fc = compiler(HISTOGRAM_WIDTH)
    entries = fc.entries("d", frame(histogram()), BIRTH, count_refused=True)
    names = series_of(entries)
    assert len(entries) == HISTOGRAM_WIDTH == fc.budget.series("d")
    assert names == [("latency_seconds_bucket", None, "0.1"),
                     ("latency_seconds_bucket", None, "1.0"),
                     ("latency_seconds_bucket", None, "10.0"),
                     ("latency_seconds_bucket", None, "+Inf"),
                     ("latency_seconds_sum", None, None),
                     ("latency_seconds_count", None, None)]
    assert fc.budget.refused == {}
    # The budget is full now: any new series, however small, is refused.
    assert fc.entries("d", frame(gauge(0), seq=1), BIRTH, count_refused=True) == []
    assert fc.budget.refused == {"d": 1}
    # The histogram itself is known and keeps passing.
    assert len(fc.entries("d", frame(histogram(5.0), seq=2), BIRTH)) == HISTOGRAM_WIDTH


def test_a_histogram_one_slot_too_wide_is_refused_whole() -> None:
    fc = compiler(HISTOGRAM_WIDTH - 1)
    assert fc.entries("d", frame(histogram()), BIRTH, count_refused=True) == []
    assert fc.budget.refused == {"d": 1}  # one sample refused, whatever its width
    assert fc.budget.series("d") == 0
    # A smaller series still fits in the room the histogram could not use.
    entries = fc.entries("d", frame(histogram(), gauge(0), seq=1), BIRTH, count_refused=True)
    assert series_of(entries) == [("temperature_celsius", "0", None)]
    assert fc.budget.refused == {"d": 2}


def test_a_series_outside_the_six_byte_timestamp_range_is_budgeted_too() -> None:
    fc = compiler(1)
    # 1971: a 5-byte varint timestamp takes the compiler's long way.
    far = frame(gauge(0, dt_ms=-T0 + 40_000_000_000), gauge(1, dt_ms=-T0 + 40_000_000_000))
    entries = fc.entries("d", far, BIRTH, count_refused=True)
    assert series_of(entries) == [("temperature_celsius", "0", None)]
    assert fc.budget.refused == {"d": 1}


def test_another_device_is_unaffected() -> None:
    fc = compiler(2)
    raw = frame(gauge(0), gauge(1), gauge(2), gauge(3))
    fc.entries("d", raw, BIRTH, count_refused=True)
    fc.entries("d", raw, BIRTH, count_refused=True)
    entries = fc.entries("e", raw, BIRTH, count_refused=True)
    assert series_of(entries) == [("temperature_celsius", "0", None),
                                  ("temperature_celsius", "1", None)]
    assert fc.budget.refused == {"d": 4, "e": 2}
    assert (fc.budget.series("d"), fc.budget.series("e")) == (2, 2)


def test_the_budget_spans_the_devices_boots() -> None:
    fc = compiler(2)
    fc.entries("d", frame(gauge(0), gauge(1)), BIRTH, count_refused=True)
    rebooted = fixed_birth(2, T0, METRICS)
    entries = fc.entries("d", frame(gauge(1), gauge(5), gauge(0), boot=2), rebooted,
                         count_refused=True)
    assert series_of(entries) == [("temperature_celsius", "1", None),
                                  ("temperature_celsius", "0", None)]
    assert fc.budget.refused == {"d": 1}


def test_an_unbudgeted_compiler_passes_everything() -> None:
    fc = FrameCompiler(SeriesEncoder())
    raw = frame(*(gauge(core) for core in range(50)), histogram())
    assert len(fc.entries("d", raw, BIRTH, count_refused=True)) == 50 + HISTOGRAM_WIDTH
    assert fc.budget.refused == {}


def test_a_forgotten_devices_series_are_budgeted_afresh() -> None:
    fc = compiler(2)
    fc.entries("d", frame(gauge(0), gauge(1), gauge(2)), BIRTH, count_refused=True)
    fc.budget.forget("d")  # what the API's DELETE does, with:
    fc.forget_device("d")
    entries = fc.entries("d", frame(gauge(0), gauge(1), gauge(3), gauge(4), seq=1), BIRTH,
                         count_refused=True)
    passed = {core for _, core, _ in series_of(entries)}
    assert len(passed) <= 2
    assert fc.budget.series("d") == len(passed)
    assert all(fc.budget.admitted("d", "temperature_celsius", (("core", c), ("site", "lab")))
               for c in passed if c is not None)
