"""What the simulated fleet published, so that tests can compare it with what arrived."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class FrameKey:
    device_id: str
    boot: int
    seq: int


class FrameLedger:
    """Telemetry frames the broker acknowledged (PUBACK), keyed by (device, boot, seq).

    The fleet records from its driver thread while tests and reports read from others.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: set[FrameKey] = set()
        self.historical = 0  # how many of the recorded frames were replays
        self.duplicates = 0  # a key recorded twice would be a simulator bug; counted, not hidden

    def record(self, device_id: str, boot: int, seq: int, *, historical: bool = False) -> None:
        key = FrameKey(device_id, boot, seq)
        with self._lock:
            if key in self._keys:
                self.duplicates += 1
                return
            self._keys.add(key)
            if historical:
                self.historical += 1

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def keys(self) -> frozenset[FrameKey]:
        with self._lock:
            return frozenset(self._keys)

    def missing(self, received: Iterable[FrameKey]) -> set[FrameKey]:
        """Published frames absent from `received`."""
        return set(self.keys() - set(received))

    def count_by_device(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for key in self.keys():
            counts[key.device_id] += 1
        return dict(counts)

    def ranges(self) -> dict[str, dict[int, list[tuple[int, int]]]]:
        """Compact form: device -> boot -> inclusive seq ranges, for a JSON summary."""
        seqs: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        for key in self.keys():
            seqs[key.device_id][key.boot].append(key.seq)
        return {
            device: {boot: _to_ranges(sorted(values)) for boot, values in boots.items()}
            for device, boots in seqs.items()
        }

    @staticmethod
    def keys_from_ranges(ranges: dict[str, dict[str, list[list[int]]]]) -> set[FrameKey]:
        """Inverse of `ranges()` after a JSON round trip (boots become string keys)."""
        return {
            FrameKey(device, int(boot), seq)
            for device, boots in ranges.items()
            for boot, spans in boots.items()
            for lo, hi in spans
            for seq in range(lo, hi + 1)
        }


def _to_ranges(sorted_seqs: list[int]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for seq in sorted_seqs:
        if spans and seq == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], seq)
        else:
            spans.append((seq, seq))
    return spans
