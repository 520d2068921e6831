"""FrameLedger: what was published, compared with what arrived."""

from __future__ import annotations

import json

from firmware_sim.ledger import FrameKey, FrameLedger


def test_records_missing_and_duplicates() -> None:
    ledger = FrameLedger()
    for seq in range(5):
        ledger.record("a", 7, seq)
    ledger.record("a", 7, 2, historical=True)  # same key again
    ledger.record("b", 1, 0, historical=True)
    assert len(ledger) == 6
    assert ledger.duplicates == 1
    assert ledger.historical == 1
    assert FrameKey("a", 7, 4) in ledger
    received = [FrameKey("a", 7, s) for s in (0, 1, 3, 4)] + [FrameKey("x", 1, 1)]
    assert ledger.missing(received) == {FrameKey("a", 7, 2), FrameKey("b", 1, 0)}
    assert ledger.count_by_device() == {"a": 5, "b": 1}


def test_ranges_round_trip_through_json() -> None:
    ledger = FrameLedger()
    for seq in (0, 1, 2, 5, 6, 9):
        ledger.record("a", 3_000_000_000, seq)
    ledger.record("a", 4, 0)
    ranges = ledger.ranges()
    assert ranges == {"a": {3_000_000_000: [(0, 2), (5, 6), (9, 9)], 4: [(0, 0)]}}
    assert FrameLedger.keys_from_ranges(json.loads(json.dumps(ranges))) == set(ledger.keys())
