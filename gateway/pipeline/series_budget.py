"""Per-device series budget: one bad firmware must not blow up the receiver's cardinality.

A device may create at most `limit` distinct series (a histogram's buckets, _sum and _count
each count); samples of any further series are refused (dropped and counted) and the device
is flagged in the API. Series are remembered by a 64-bit hash of (name, labels), kept per
device in a sorted array of 8-byte ints (not a set of int objects: ~2.3 KB a device of 20
series as a set, ~0.3 KB as an array; 100,000 such devices ~30 MB). Admission is checked once
per series and boot (the compiler remembers the answer), so the bisect is off the hot path.

The budget lives in memory: after a restart it is learnt again from traffic, so the first
`limit` series a device sends are the ones admitted. Admission is checked by the same compiler
object at ingest and when a forwarder re-reads a frame, so both agree on what was admitted.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left

from device_protocol import Labels


class SeriesBudget:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the series budget must be at least 1")
        self.limit = limit
        self._series: dict[str, array[int]] = {}
        self.refused: dict[str, int] = {}  # samples refused at ingest, per device

    def admit(self, device_id: str, name: str, labels: Labels, width: int = 1) -> bool:
        """True if the series is known or fits; `width` is the series it makes (histograms)."""
        known = self._series.get(device_id)
        if known is None:
            known = self._series[device_id] = array("q")
        key = hash((name, labels))
        if _has(known, key):
            return True
        if len(known) + width > self.limit:
            return False
        _add(known, key)
        for i in range(1, width):  # a histogram's other series: placeholders that take room
            _add(known, hash((name, labels, i)))
        return True

    def admitted(self, device_id: str, name: str, labels: Labels) -> bool:
        known = self._series.get(device_id)
        return known is not None and _has(known, hash((name, labels)))

    def series(self, device_id: str) -> int:
        known = self._series.get(device_id)
        return len(known) if known is not None else 0

    def over(self, device_id: str) -> bool:
        return device_id in self.refused

    def count_refused(self, device_id: str, samples: int) -> None:
        self.refused[device_id] = self.refused.get(device_id, 0) + samples

    def forget(self, device_id: str) -> None:
        self._series.pop(device_id, None)
        self.refused.pop(device_id, None)


def _has(known: array[int], key: int) -> bool:
    at = bisect_left(known, key)
    return at < len(known) and known[at] == key


def _add(known: array[int], key: int) -> None:
    at = bisect_left(known, key)
    if at == len(known) or known[at] != key:
        known.insert(at, key)
