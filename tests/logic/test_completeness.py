"""Completeness: SeqRanges' O(1) counters against a set model, and gateway.fleet.completeness.

The model is a plain set of seqs; a trim is applied to it from its definition (the oldest
ranges are merged into one, their gaps then count as received: that is what the ledger
believes from there on).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_protocol import Birth, MetricDef, MetricType
from gateway.fleet.completeness import (
    BootCompleteness,
    DeviceCompleteness,
    of_device,
    percent,
    totals,
)
from gateway.fleet.state import FleetState
from gateway.pipeline.dedup import Ledger, SeqRanges, decode_ranges, encode_ranges

from .test_dedup import model_ranges  # the set model the ledger's own tests use

T0 = 1_790_000_000_000
FAR = 4_000  # beyond every generated seq


# ------------------------------------------------------------------ SeqRanges vs a set


def model_trim(seqs: set[int], max_ranges: int) -> set[int]:
    runs = model_ranges(seqs)
    if len(runs) <= max_ranges:
        return seqs
    merged_end = runs[len(runs) - max_ranges][1]  # the end of the last range folded in
    return seqs | set(range(runs[0][0], merged_end))


def assert_matches(ranges: SeqRanges, seqs: set[int]) -> None:
    assert ranges.count() == len(seqs)
    assert ranges.first() == (min(seqs) if seqs else None)
    assert ranges.last() == (max(seqs) if seqs else None)
    expected_missing = max(seqs) - min(seqs) + 1 - len(seqs) if seqs else 0
    assert ranges.missing() == expected_missing
    assert sum(end - start for start, end in ranges.gaps()) == expected_missing
    assert list(ranges.ranges()) == model_ranges(seqs)


# Small seqs collide, touch and leave gaps; the model fills trimmed gaps seq by seq, so the
# spread stays in the thousands.
STEP = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 80)),
    st.tuples(st.just("add"), st.integers(0, 3_000)),
    st.tuples(st.just("trim"), st.integers(1, 6)),
    st.tuples(st.just("copy"), st.booleans()),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(STEP, max_size=80))
def test_count_missing_first_last_equal_a_set_model(steps: list[tuple[str, int]]) -> None:
    ranges, seqs = SeqRanges(), set[int]()
    for kind, arg in steps:
        if kind == "add":
            assert ranges.add(arg) == (arg not in seqs)
            seqs.add(arg)
        elif kind == "trim":
            merged = ranges.trim(arg)
            after = model_trim(seqs, arg)
            assert merged == max(0, len(model_ranges(seqs)) - arg)
            seqs = after
            assert len(ranges) <= arg
        else:
            clone = ranges.copy()
            assert_matches(clone, seqs)
            clone.add(FAR)  # a copy is independent of its original
            if arg:
                ranges, clone = clone, ranges
                seqs = seqs | {FAR}
        assert_matches(ranges, seqs)
    # What the ledger stores and loads back has the same counters.
    assert_matches(decode_ranges(encode_ranges(ranges)), seqs)
    assert_matches(SeqRanges(ranges.ranges()), seqs)


def test_counters_of_a_simple_ledger_entry() -> None:
    ranges = SeqRanges()
    assert (ranges.count(), ranges.missing(), ranges.first(), ranges.last()) == (0, 0, None, None)
    for seq in (5, 6, 7, 10, 12, 3):
        ranges.add(seq)
    assert (ranges.count(), ranges.missing(), ranges.first(), ranges.last()) == (6, 4, 3, 12)
    assert ranges.gaps() == [(4, 5), (8, 10), (11, 12)]
    ranges.add(6)  # a duplicate changes nothing
    assert ranges.count() == 6
    assert ranges.trim(2) == 2  # 3..10 one range: the ledger believes 4, 8 and 9 seen
    assert (ranges.count(), ranges.missing(), ranges.first(), ranges.last()) == (9, 1, 3, 12)
    assert ranges.gaps() == [(11, 12)]


def test_counters_of_constructed_ranges_merge_overlaps() -> None:
    ranges = SeqRanges([(10, 20), (0, 5), (15, 25), (5, 6)])
    assert list(ranges.ranges()) == [(0, 6), (10, 25)]
    assert (ranges.count(), ranges.missing(), ranges.first(), ranges.last()) == (21, 4, 0, 24)


# ------------------------------------------------------------------ completeness views


def test_percent() -> None:
    assert percent(0, 0) is None
    assert percent(10, 0) == 100.0
    assert percent(0, 10) == 0.0
    assert percent(199, 1) == 99.5
    assert percent(2, 1) == 66.667  # three decimals


def birth(boot: int) -> Birth:
    return Birth(boot, T0, "esp32", "1.0", (), 1_000, (MetricDef(0, "g", MetricType.GAUGE),))


def device_with_boots(*boots: int, device_id: str = "d") -> FleetState:
    fleet = FleetState()
    for i, boot in enumerate(boots):
        fleet.observe_birth(device_id, birth(boot), T0 + i)
    return fleet


def ledger_of(entries: dict[tuple[str, int], list[int]], max_ranges: int = 4096) -> Ledger:
    ledger = Ledger(max_ranges)
    for key, seqs in entries.items():
        ranges = SeqRanges()
        for seq in seqs:
            ranges.add(seq)
        ledger.load(key, ranges)
    return ledger


def test_of_device_gives_each_boot_newest_first_with_its_duplicates() -> None:
    fleet = device_with_boots(4, 9)
    fleet.observe_duplicates([("d", 9), ("d", 9), ("d", 4)])
    ledger = ledger_of({("d", 4): [0, 1, 2, 5], ("d", 9): [*range(10), *range(20, 30)],
                        ("other", 9): [0, 100]})
    view = of_device(fleet.devices["d"], ledger)
    assert view == DeviceCompleteness(
        received=24, duplicates=3, missing=12,
        boots=[BootCompleteness(9, 20, 2, 10, 0, 29, [(10, 20)]),
               BootCompleteness(4, 4, 1, 2, 0, 5, [(3, 5)])])
    assert view.completeness_pct == percent(24, 12) == 66.667
    assert [b.completeness_pct for b in view.boots] == [66.667, 66.667]
    assert totals(fleet.devices["d"], ledger) == (24, 12)


def test_a_boot_without_a_ledger_entry_shows_zeros_and_its_duplicates() -> None:
    fleet = device_with_boots(1, 2)
    fleet.observe_duplicates([("d", 1)])
    ledger = ledger_of({("d", 2): [0, 1, 2]})  # boot 1 pruned from the ledger
    view = of_device(fleet.devices["d"], ledger)
    assert view.boots == [BootCompleteness(2, 3, 0, 0, 0, 2, []),
                          BootCompleteness(1, 0, 1, 0, None, None, [])]
    assert (view.received, view.duplicates, view.missing) == (3, 1, 0)
    assert view.completeness_pct == 100.0
    assert view.boots[1].completeness_pct is None
    assert totals(fleet.devices["d"], ledger) == (3, 0)


def test_a_device_with_nothing_received_has_no_percentage() -> None:
    fleet = device_with_boots(1)
    view = of_device(fleet.devices["d"], Ledger())
    assert (view.received, view.missing, view.completeness_pct) == (0, 0, None)
    assert totals(fleet.devices["d"], Ledger()) == (0, 0)


@pytest.mark.parametrize("max_gaps", [0, 1, 3, 100])
def test_gaps_are_capped_but_missing_counts_all_of_them(max_gaps: int) -> None:
    fleet = device_with_boots(1)
    seqs = list(range(0, 40, 2))  # 19 one-seq gaps
    view = of_device(fleet.devices["d"], ledger_of({("d", 1): seqs}), max_gaps=max_gaps)
    (boot,) = view.boots
    assert boot.gaps == [(s + 1, s + 2) for s in seqs[:-1]][:max_gaps]
    assert (boot.received, boot.missing, boot.first_seq, boot.last_seq) == (20, 19, 0, 38)


def test_a_replay_that_fills_a_gap_removes_it() -> None:
    fleet = device_with_boots(1)
    ledger = ledger_of({("d", 1): [0, 1, 4, 5]})
    record = fleet.devices["d"]
    assert totals(record, ledger) == (4, 2)
    overlay = ledger.overlay()
    overlay.add(("d", 1), 2)
    overlay.add(("d", 1), 3)
    assert totals(record, ledger) == (4, 2)  # not before the batch commits
    ledger.apply(overlay)
    assert totals(record, ledger) == (6, 0)
    assert of_device(record, ledger).boots[0].gaps == []


def test_gaps_merged_by_the_ledgers_trim_leave_the_view() -> None:
    fleet = device_with_boots(1)
    ledger = Ledger(max_ranges=2)
    overlay = ledger.overlay()
    for seq in (0, 2, 4, 6):
        overlay.add(("d", 1), seq)
    ledger.apply(overlay)
    view = of_device(fleet.devices["d"], ledger)
    # 0..4 merged into one range: 1 and 3 count as received; only 5 is still missing.
    assert view.boots == [BootCompleteness(1, 6, 0, 1, 0, 6, [(5, 6)])]


def test_only_the_devices_known_boots_count() -> None:
    fleet = device_with_boots(*range(12))  # the record keeps the newest 8 boots
    ledger = ledger_of({("d", boot): [0, 2] for boot in range(12)})
    record = fleet.devices["d"]
    assert [b.boot for b in of_device(record, ledger).boots] == list(range(11, 3, -1))
    assert totals(record, ledger) == (16, 8)
