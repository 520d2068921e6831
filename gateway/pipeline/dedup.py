"""Exact deduplication by (device_id, boot, seq): a ledger of received seq ranges.

The ledger holds, per (device, boot), the sorted disjoint half-open ranges of seqs already
accepted. It answers "seen before?" and, as a by-product, where the gaps are. It is pure: the
pipeline persists changed entries in the same SQLite transaction as the frames themselves, so a
frame and its "seen" mark are never committed apart.

Updates are copy-on-write (`Ledger.overlay()`): a batch works on copies of the entries it
touches, and only a committed batch folds them back, so a failed commit leaves no trace.
"""

from __future__ import annotations

from gateway.seq_ranges import SeqRanges, decode_ranges, encode_ranges

LedgerKey = tuple[str, int]  # (device_id, boot)

__all__ = ["Ledger", "LedgerKey", "LedgerOverlay", "SeqRanges", "decode_ranges", "encode_ranges"]


class Ledger:
    def __init__(self, max_ranges: int = 4096) -> None:
        self._entries: dict[LedgerKey, SeqRanges] = {}
        # Per boot, the newest sample time (ms) stored: its stale markers go 1 ms after it.
        self.newest_ms: dict[LedgerKey, int] = {}
        self.max_ranges = max_ranges

    def load(self, key: LedgerKey, ranges: SeqRanges, newest_ms: int | None = None) -> None:
        self._entries[key] = ranges
        if newest_ms is not None:
            self.newest_ms[key] = newest_ms

    def get(self, key: LedgerKey) -> SeqRanges | None:
        return self._entries.get(key)

    def seen(self, key: LedgerKey, seq: int) -> bool:
        entry = self._entries.get(key)
        return entry is not None and seq in entry

    def overlay(self) -> LedgerOverlay:
        return LedgerOverlay(self)

    def apply(self, overlay: LedgerOverlay) -> None:
        self._entries.update(overlay.changed)
        self.newest_ms.update(overlay.newest_ms)

    def forget(self, key: LedgerKey) -> None:
        self._entries.pop(key, None)
        self.newest_ms.pop(key, None)

    def keys(self) -> list[LedgerKey]:
        return list(self._entries)

    def keys_with_gaps(self) -> list[LedgerKey]:
        return [key for key, ranges in self._entries.items() if len(ranges) > 1]

    def __len__(self) -> int:
        return len(self._entries)


class LedgerOverlay:
    """A batch's tentative view of the ledger: copies of touched entries, folded in on commit."""

    __slots__ = ("_base", "changed", "newest_ms")

    def __init__(self, base: Ledger) -> None:
        self._base = base
        self.changed: dict[LedgerKey, SeqRanges] = {}
        self.newest_ms: dict[LedgerKey, int] = {}

    def note_newest(self, key: LedgerKey, newest_ms: int) -> None:
        """A frame of this boot with samples up to newest_ms is committed with the batch."""
        known = self.newest_ms.get(key)
        if known is None:
            known = self._base.newest_ms.get(key)
        if known is None or newest_ms > known:
            self.newest_ms[key] = newest_ms

    def newest(self, key: LedgerKey) -> int | None:
        known = self.newest_ms.get(key)
        return known if known is not None else self._base.newest_ms.get(key)

    def seen(self, key: LedgerKey, seq: int) -> bool:
        """Is seq already recorded (before this batch or earlier in it)?"""
        entry = self.changed.get(key)
        if entry is None:
            entry = self._base.get(key)
        return entry is not None and seq in entry

    def add(self, key: LedgerKey, seq: int) -> bool:
        """Record seq; return False when it is a duplicate (seen before or earlier in the batch).
        Only for a frame whose samples this batch commits for forwarding: a seq is "seen" only
        then (a quarantined or held frame leaves it unseen, so a valid copy still gets in)."""
        entry = self.changed.get(key)
        if entry is None:
            base = self._base.get(key)
            if base is not None and seq in base:
                return False
            entry = base.copy() if base is not None else SeqRanges()
            self.changed[key] = entry
        if not entry.add(seq):
            return False
        if len(entry) > self._base.max_ranges:
            entry.trim(self._base.max_ranges)
        return True
