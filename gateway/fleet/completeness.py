"""The completeness ledger: per device and boot, frames received, duplicates, missing seqs.

Read from the dedup ledger (the seq ranges it keeps to drop duplicates are also the record of
what arrived) and the fleet's duplicate counts. Missing means the gaps between the first and
the last seq received of a boot: frames lost before the first or after the last one cannot be
told from frames never sent. A replay (`h: true`) that fills a gap removes it. Boots pruned
from the ledger (`dedup_retention_days`) and gaps merged away when a boot has more than
`ledger_max_ranges` of them leave this view too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.fleet.state import DeviceRecord
from gateway.seq_ranges import SeqRanges


class Ledger(Protocol):
    """What completeness reads of the dedup ledger (gateway.pipeline.dedup.Ledger)."""

    def get(self, key: tuple[str, int]) -> SeqRanges | None: ...


def percent(received: int, missing: int) -> float | None:
    total = received + missing
    return None if total == 0 else round(100.0 * received / total, 3)


@dataclass(slots=True, frozen=True)
class BootCompleteness:
    boot: int
    received: int
    duplicates: int
    missing: int
    first_seq: int | None
    last_seq: int | None
    gaps: list[tuple[int, int]]  # half-open seq ranges, the first max_gaps

    @property
    def completeness_pct(self) -> float | None:
        return percent(self.received, self.missing)


@dataclass(slots=True, frozen=True)
class DeviceCompleteness:
    received: int
    duplicates: int
    missing: int
    boots: list[BootCompleteness]

    @property
    def completeness_pct(self) -> float | None:
        return percent(self.received, self.missing)


def totals(record: DeviceRecord, ledger: Ledger) -> tuple[int, int]:
    """(received, missing) over the device's known boots; cheap (no gap lists)."""
    received = missing = 0
    device_id = record.device_id
    for boot in record.boots:
        ranges = ledger.get((device_id, boot))
        if ranges is not None:
            received += ranges.count()
            missing += ranges.missing()
    return received, missing


def of_device(record: DeviceRecord, ledger: Ledger, max_gaps: int = 100) -> DeviceCompleteness:
    boots = []
    for boot in reversed(record.boots):  # newest first
        ranges = ledger.get((record.device_id, boot))
        duplicates = record.duplicates.get(boot, 0)
        if ranges is None:
            boots.append(BootCompleteness(boot, 0, duplicates, 0, None, None, []))
            continue
        boots.append(BootCompleteness(boot, ranges.count(), duplicates, ranges.missing(),
                                      ranges.first(), ranges.last(), ranges.gaps()[:max_gaps]))
    return DeviceCompleteness(sum(b.received for b in boots), sum(b.duplicates for b in boots),
                              sum(b.missing for b in boots), boots)
