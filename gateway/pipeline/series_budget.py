"""Per-device series budget: one bad firmware must not blow up the receiver's cardinality.

A device may create at most `limit` distinct series (a histogram's buckets, _sum and _count
each count); samples of any further series are refused (dropped and counted) and the device
is flagged in the API. Series are remembered by a 64-bit hash of (name, labels), about 60
bytes each: 2 million series (100,000 devices x 20) cost ~120 MB.

The budget lives in memory: after a restart it is learnt again from traffic, so the first
`limit` series a device sends are the ones admitted. Admission is checked by the same compiler
object at ingest and when a forwarder re-reads a frame, so both agree on what was admitted.
"""

from __future__ import annotations

from device_protocol import Labels


class SeriesBudget:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the series budget must be at least 1")
        self.limit = limit
        self._series: dict[str, set[int]] = {}
        self.refused: dict[str, int] = {}  # samples refused at ingest, per device

    def admit(self, device_id: str, name: str, labels: Labels, width: int = 1) -> bool:
        """True if the series is known or fits; `width` is the series it makes (histograms)."""
        known = self._series.get(device_id)
        if known is None:
            known = self._series[device_id] = set()
        key = hash((name, labels))
        if key in known:
            return True
        if len(known) + width > self.limit:
            return False
        known.add(key)
        if width > 1:  # a histogram's other series: placeholders that only take room
            known.update(hash((name, labels, i)) for i in range(1, width))
        return True

    def admitted(self, device_id: str, name: str, labels: Labels) -> bool:
        known = self._series.get(device_id)
        return known is not None and hash((name, labels)) in known

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
