"""Seq ranges: a sorted set of half-open [start, end) intervals of seqs, and its text form.

Pure, and a foundation: the pipeline's dedup ledger is made of them and the buffer's rebuild
after a salvage recomputes them from stored frames, so neither package owns the other's format.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator


class SeqRanges:
    """Sorted, disjoint, non-adjacent half-open ranges [start, end) of seqs."""

    __slots__ = ("_count", "_ends", "_starts")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in sorted(ranges):
            self._append_merged(start, end)
        self._count = sum(e - s for s, e in zip(self._starts, self._ends, strict=True))

    def _append_merged(self, start: int, end: int) -> None:
        if self._ends and start <= self._ends[-1]:
            self._ends[-1] = max(self._ends[-1], end)
        else:
            self._starts.append(start)
            self._ends.append(end)

    def copy(self) -> SeqRanges:
        clone = SeqRanges()
        clone._starts = self._starts.copy()
        clone._ends = self._ends.copy()
        clone._count = self._count
        return clone

    def __contains__(self, seq: int) -> bool:
        ends = self._ends
        if ends and seq >= ends[-1]:  # the common case: a new frame beyond everything seen
            return False
        i = bisect_right(self._starts, seq) - 1
        return i >= 0 and seq < ends[i]

    def add(self, seq: int) -> bool:
        """Add seq; return False if it was already there."""
        starts, ends = self._starts, self._ends
        if ends and seq == ends[-1]:  # next in order: extend the last range
            ends[-1] = seq + 1
            self._count += 1
            return True
        i = bisect_right(starts, seq) - 1
        if i >= 0 and seq < ends[i]:
            return False
        self._count += 1
        joins_left = i >= 0 and ends[i] == seq
        joins_right = i + 1 < len(starts) and starts[i + 1] == seq + 1
        if joins_left and joins_right:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]
        elif joins_left:
            ends[i] = seq + 1
        elif joins_right:
            starts[i + 1] = seq
        else:
            starts.insert(i + 1, seq)
            ends.insert(i + 1, seq + 1)
        return True

    def discard(self, seq: int) -> bool:
        """Remove seq; return False if it was not there."""
        starts, ends = self._starts, self._ends
        i = bisect_right(starts, seq) - 1
        if i < 0 or seq >= ends[i]:
            return False
        self._count -= 1
        if starts[i] == seq and ends[i] == seq + 1:
            del starts[i], ends[i]
        elif starts[i] == seq:
            starts[i] = seq + 1
        elif ends[i] == seq + 1:
            ends[i] = seq
        else:  # split the range around seq
            starts.insert(i + 1, seq + 1)
            ends.insert(i + 1, ends[i])
            ends[i] = seq
        return True

    def trim(self, max_ranges: int) -> int:
        """Merge the oldest gaps until at most max_ranges remain; return how many were merged."""
        excess = len(self._starts) - max_ranges
        if excess <= 0:
            return 0
        # Fold the first excess+1 ranges into one: the gaps between them are forgotten.
        self._starts[excess] = self._starts[0]
        del self._starts[:excess], self._ends[:excess]
        # The forgotten gaps now count as seen: that is what the ledger believes from here on.
        self._count = sum(e - s for s, e in zip(self._starts, self._ends, strict=True))
        return excess

    def ranges(self) -> Iterator[tuple[int, int]]:
        return zip(self._starts, self._ends, strict=True)

    def count(self) -> int:
        """Seqs received (kept up to date by add; O(1))."""
        return self._count

    def missing(self) -> int:
        """Seqs absent between the first and the last received: the gaps' total size."""
        if not self._starts:
            return 0
        return self._ends[-1] - self._starts[0] - self._count

    def first(self) -> int | None:
        return self._starts[0] if self._starts else None

    def last(self) -> int | None:
        return self._ends[-1] - 1 if self._ends else None

    def gaps(self) -> list[tuple[int, int]]:
        """Missing seqs between the first and last seen, as half-open ranges."""
        return [(self._ends[i], self._starts[i + 1]) for i in range(len(self._starts) - 1)]

    def __len__(self) -> int:
        return len(self._starts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SeqRanges) and list(self.ranges()) == list(other.ranges())

    def __repr__(self) -> str:
        return f"SeqRanges({encode_ranges(self)!r})"


def encode_ranges(ranges: SeqRanges) -> str:
    """Compact text form for the ledger table: "0-200,250-251" (half-open)."""
    starts, ends = ranges._starts, ranges._ends
    if len(starts) == 1:  # the usual case: no gaps
        return f"{starts[0]}-{ends[0]}"
    return ",".join(f"{s}-{e}" for s, e in zip(starts, ends, strict=True))


def decode_ranges(text: str) -> SeqRanges:
    if not text:
        return SeqRanges()
    pairs = []
    for part in text.split(","):
        start, _, end = part.partition("-")
        pairs.append((int(start), int(end)))
    return SeqRanges(pairs)
