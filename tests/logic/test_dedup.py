"""Dedup ledger: SeqRanges, Ledger and LedgerOverlay against a plain `set` model.

The model is deliberately naive (a set of seqs per key, ranges recomputed from scratch, trim
re-derived from its definition) so that it cannot share a bug with the bisect-based code.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from gateway.pipeline.dedup import (
    Ledger,
    LedgerKey,
    LedgerOverlay,
    SeqRanges,
    decode_ranges,
    encode_ranges,
)

SMALL_SEQS = st.integers(min_value=0, max_value=60)  # small: collisions, adjacency and gaps
ANY_SEQS = st.integers(min_value=0, max_value=2**32 - 1)
SEQ_LISTS = st.lists(st.one_of(SMALL_SEQS, ANY_SEQS), max_size=120)


# ---------------------------------------------------------------------------- the model
def model_ranges(seqs: set[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive seqs as half-open ranges, in order."""
    runs: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if runs and runs[-1][1] == seq:
            runs[-1] = (runs[-1][0], seq + 1)
        else:
            runs.append((seq, seq + 1))
    return runs


def model_gaps(seqs: set[int]) -> list[tuple[int, int]]:
    runs = model_ranges(seqs)
    return [(runs[i][1], runs[i + 1][0]) for i in range(len(runs) - 1)]


def model_trim(seqs: set[int], max_ranges: int) -> set[int]:
    """Forget the oldest gaps: fill everything from the first seq to the end of run #excess."""
    runs = model_ranges(seqs)
    excess = len(runs) - max_ranges
    if excess <= 0:
        return set(seqs)
    return seqs | set(range(runs[0][0], runs[excess][1]))


def build(seqs: list[int]) -> SeqRanges:
    ranges = SeqRanges()
    for seq in seqs:
        ranges.add(seq)
    return ranges


def assert_matches(ranges: SeqRanges, seqs: set[int]) -> None:
    assert list(ranges.ranges()) == model_ranges(seqs)
    assert ranges.count() == len(seqs)
    assert len(ranges) == len(model_ranges(seqs))
    assert ranges.gaps() == model_gaps(seqs)


# ---------------------------------------------------------------------------- SeqRanges
@given(SEQ_LISTS)
def test_add_returns_false_exactly_for_seqs_already_seen(seqs: list[int]) -> None:
    ranges = SeqRanges()
    seen: set[int] = set()
    for seq in seqs:
        assert ranges.add(seq) is (seq not in seen)
        seen.add(seq)
        assert seq in ranges
    assert_matches(ranges, seen)


@given(SEQ_LISTS, st.lists(st.one_of(SMALL_SEQS, ANY_SEQS), max_size=40))
def test_contains_agrees_with_the_set(seqs: list[int], probes: list[int]) -> None:
    ranges = build(seqs)
    for probe in [*probes, *seqs, *(s + 1 for s in seqs), *(s - 1 for s in seqs)]:
        assert (probe in ranges) is (probe in set(seqs))


@given(st.lists(st.tuples(SMALL_SEQS, st.integers(1, 10)), max_size=20))
def test_constructor_merges_overlapping_and_adjacent_ranges(
        pairs: list[tuple[int, int]]) -> None:
    half_open = [(start, start + length) for start, length in pairs]
    union = {seq for start, end in half_open for seq in range(start, end)}
    assert_matches(SeqRanges(half_open), union)


@given(SEQ_LISTS)
def test_encode_decode_round_trip(seqs: list[int]) -> None:
    ranges = build(seqs)
    text = encode_ranges(ranges)
    decoded = decode_ranges(text)
    assert decoded == ranges
    assert_matches(decoded, set(seqs))
    assert encode_ranges(decoded) == text


def test_encoded_form_is_half_open_start_end_pairs() -> None:
    ranges = build([0, 1, 2, 5, 9, 10])
    assert encode_ranges(ranges) == "0-3,5-6,9-11"
    assert encode_ranges(SeqRanges()) == ""
    assert decode_ranges("") == SeqRanges()
    assert decode_ranges("0-3,5-6,9-11") == ranges


def test_gaps_are_the_missing_seqs_between_first_and_last() -> None:
    ranges = build([3, 4, 7, 12, 13, 14])
    assert ranges.gaps() == [(5, 7), (8, 12)]
    assert build([5]).gaps() == []
    assert SeqRanges().gaps() == []


@given(st.lists(st.integers(min_value=0, max_value=500), max_size=120),
       st.integers(min_value=1, max_value=8))
def test_trim_keeps_at_most_max_ranges_and_never_forgets_a_seen_seq(
        seqs: list[int], max_ranges: int) -> None:
    ranges = build(seqs)
    before = list(ranges.ranges())
    merged = ranges.trim(max_ranges)
    seen = set(seqs)
    assert len(ranges) <= max_ranges
    assert merged == max(0, len(before) - max_ranges)
    for seq in seen:
        assert seq in ranges
    # Only the oldest gaps are filled: exactly the model's trimmed set, newest ranges intact.
    assert_matches(ranges, model_trim(seen, max_ranges))
    if merged and max_ranges > 1:
        assert list(ranges.ranges())[1:] == before[-(max_ranges - 1):]


def test_trim_merges_the_oldest_gaps_first() -> None:
    ranges = build([0, 2, 4, 6])  # four ranges, gaps at 1, 3, 5
    assert ranges.trim(2) == 2
    assert list(ranges.ranges()) == [(0, 5), (6, 7)]
    assert (1 in ranges, 3 in ranges) == (True, True)  # forgotten gaps now read as seen
    assert 5 not in ranges  # the newest gap is still known
    assert ranges.trim(2) == 0


def test_copy_is_independent() -> None:
    original = build([1, 2, 3])
    clone = original.copy()
    assert clone.add(10)
    assert 10 not in original
    assert original == build([1, 2, 3])


# ---------------------------------------------------------------------------- Ledger
KEYS = st.sampled_from([("dev-a", 1), ("dev-a", 2), ("dev-b", 1)])


def test_overlay_changes_are_invisible_until_applied() -> None:
    ledger = Ledger()
    ledger.load(("d", 1), build([0, 1]))
    overlay = ledger.overlay()
    assert overlay.add(("d", 1), 2)
    assert overlay.add(("e", 7), 0)
    assert not ledger.seen(("d", 1), 2)
    assert ledger.get(("e", 7)) is None
    assert ledger.get(("d", 1)) == build([0, 1])
    ledger.apply(overlay)
    assert ledger.seen(("d", 1), 2)
    assert ledger.seen(("e", 7), 0)
    assert len(ledger) == 2


def test_discarded_overlay_leaves_the_ledger_unchanged() -> None:
    ledger = Ledger()
    ledger.load(("d", 1), build([0, 1, 5]))
    overlay = ledger.overlay()
    for seq in range(10):
        overlay.add(("d", 1), seq)
    del overlay
    assert ledger.get(("d", 1)) == build([0, 1, 5])


def test_duplicates_within_one_overlay_are_reported() -> None:
    ledger = Ledger()
    overlay = ledger.overlay()
    assert overlay.add(("d", 1), 4)
    assert not overlay.add(("d", 1), 4)
    assert overlay.add(("d", 2), 4)  # same seq, other boot: not a duplicate


def test_overlay_trims_to_the_ledgers_max_ranges() -> None:
    ledger = Ledger(max_ranges=2)
    overlay = ledger.overlay()
    for seq in (0, 2, 4):
        assert overlay.add(("d", 1), seq)
    ledger.apply(overlay)
    entry = ledger.get(("d", 1))
    assert entry is not None and len(entry) == 2
    assert ledger.seen(("d", 1), 1)  # the oldest gap was forgotten: reads as seen


class LedgerMachine(RuleBasedStateMachine):
    """A Ledger and one overlay at a time, as the pipeline uses them, against sets."""

    def __init__(self) -> None:
        super().__init__()
        self.max_ranges = 3  # small, so trimming happens often
        self.ledger = Ledger(max_ranges=self.max_ranges)
        self.committed: dict[LedgerKey, set[int]] = {}
        self.overlay: LedgerOverlay | None = None
        self.pending: dict[LedgerKey, set[int]] = {}

    def _view(self, key: LedgerKey) -> set[int] | None:
        if key in self.pending:
            return self.pending[key]
        return self.committed.get(key)

    @precondition(lambda self: self.overlay is None)
    @rule()
    def open_overlay(self) -> None:
        self.overlay = self.ledger.overlay()
        self.pending = {}

    @precondition(lambda self: self.overlay is not None)
    @rule(key=KEYS, seq=SMALL_SEQS)
    def add(self, key: LedgerKey, seq: int) -> None:
        assert self.overlay is not None
        view = self._view(key)
        expected_new = view is None or seq not in view
        assert self.overlay.add(key, seq) is expected_new
        if expected_new:
            self.pending[key] = model_trim((view or set()) | {seq}, self.max_ranges)

    @precondition(lambda self: self.overlay is not None)
    @rule()
    def apply(self) -> None:
        assert self.overlay is not None
        assert set(self.overlay.changed) == set(self.pending)
        self.ledger.apply(self.overlay)
        self.committed.update(self.pending)
        self.overlay, self.pending = None, {}

    @precondition(lambda self: self.overlay is not None)
    @rule()
    def discard(self) -> None:  # a failed commit: the overlay is simply dropped
        self.overlay, self.pending = None, {}

    @precondition(lambda self: self.overlay is None)
    @rule(key=KEYS)
    def forget(self, key: LedgerKey) -> None:
        self.ledger.forget(key)
        self.committed.pop(key, None)

    @precondition(lambda self: self.overlay is None)
    @rule()
    def restart_from_the_encoded_table(self) -> None:
        rows = []
        for key in self.committed:
            entry = self.ledger.get(key)
            assert entry is not None
            rows.append((key, encode_ranges(entry)))
        self.ledger = Ledger(max_ranges=self.max_ranges)
        for key, text in rows:
            self.ledger.load(key, decode_ranges(text))

    @invariant()
    def ledger_shows_only_committed_state(self) -> None:
        assert len(self.ledger) == len(self.committed)
        for key, seqs in self.committed.items():
            entry = self.ledger.get(key)
            assert entry is not None
            assert list(entry.ranges()) == model_ranges(seqs)
            assert len(entry) <= self.max_ranges
            for seq in range(62):
                assert self.ledger.seen(key, seq) is (seq in seqs)

    @invariant()
    def overlay_view_matches_the_model(self) -> None:
        if self.overlay is None:
            return
        for key, seqs in self.pending.items():
            assert list(self.overlay.changed[key].ranges()) == model_ranges(seqs)


LedgerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=60,
                                           deadline=None)
TestLedgerMachine = LedgerMachine.TestCase


class UntrimmedLedgerMachine(LedgerMachine):
    """Same rules with a cap never reached: the ledger must be exactly the set of seen seqs."""

    def __init__(self) -> None:
        super().__init__()
        self.max_ranges = 4096
        self.ledger = Ledger(max_ranges=self.max_ranges)


UntrimmedLedgerMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=60,
                                                    deadline=None)
TestUntrimmedLedgerMachine = UntrimmedLedgerMachine.TestCase


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 60)), max_size=80))
def test_add_and_discard_match_a_set(ops: list[tuple[bool, int]]) -> None:
    ranges, model = SeqRanges(), set()
    for adding, seq in ops:
        if adding:
            assert ranges.add(seq) == (seq not in model)
            model.add(seq)
        else:
            assert ranges.discard(seq) == (seq in model)
            model.discard(seq)
        assert ranges.count() == len(model)
        assert all((s in ranges) == (s in model) for s in range(62))
        assert SeqRanges(ranges.ranges()) == ranges  # stays sorted, disjoint, non-adjacent
