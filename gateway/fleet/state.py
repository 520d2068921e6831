"""Fleet state in memory: each device's lifecycle state, what it last said, its counters.

Pure: the pipeline tells it what arrived (births, telemetry, deaths, duplicates), the lifecycle
task asks it to `sweep` the clock, and both collect the resulting events with `take_events`.
The gateway checkpoints it to SQLite every 30 s; it is advisory (losing 30 s of "last seen" to
a kill is harmless), unlike the frames, ledger and births, which are committed before any ack.

States (see docs/api.md): `online`, `late` (no frame for `late_after_intervals` of the device's
declared interval), `offline` (a death of its current boot, or no frame for
`offline_after_intervals`). Timeouts are found with a heap of deadlines: each device that is
not offline has one live entry (`due_ms`), re-queued at its next deadline when popped, so a
frame costs no heap work at all. An entry whose time no longer matches the device's `due_ms`
is stale (the device came back, or its interval changed) and is skipped when popped.

The records, states and events themselves (and their checkpoint rows) are in
`gateway.fleet.records`; `FleetState` holds the fleet's indexes (by state, by last seen,
versions), the lifecycle rules, the deadline heap and the queue of events not yet taken.
"""

from __future__ import annotations

import heapq
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from device_protocol import Birth, TelemetryRows
from gateway.fleet.records import (
    MAX_BOOTS_KEPT,
    DeviceEvent,
    DeviceRecord,
    DeviceState,
    SeriesId,
    SeriesValue,
    record_from_row,
    series_key,
)

# Importers name these from here: the records moved to gateway.fleet.records.
__all__ = ["MAX_BOOTS_KEPT", "DeviceEvent", "DeviceRecord", "DeviceState", "FleetState",
           "SeriesId", "SeriesValue", "series_key"]


class FleetState:
    def __init__(self, *, late_after_intervals: float = 2.0,
                 offline_after_intervals: float = 6.0, started_ms: int = 0) -> None:
        if not 0 < late_after_intervals < offline_after_intervals:
            raise ValueError("need 0 < late_after_intervals < offline_after_intervals")
        self.devices: dict[str, DeviceRecord] = {}
        self.late_after = late_after_intervals
        self.offline_after = offline_after_intervals
        # Timeouts count from the gateway's start at the earliest: after a restart, devices
        # are not declared late for the time the gateway itself was away.
        self.started_ms = started_ms
        # Device ids by state: counts in O(1), and a rare state's devices without a scan.
        self.by_state: dict[DeviceState, set[str]] = {state: set() for state in DeviceState}
        self.platforms: Counter[str] = Counter()  # devices by platform, kept as births come
        self.firmwares: Counter[str] = Counter()
        self.incomplete: set[str] = set()  # devices whose ledger may have gaps
        # For the checkpoint: devices whose state, boot, birth or counters of duplicates and
        # refusals changed (written every 30 s), and those whose only change is the progress
        # of their telemetry (last seen, seq, frames, newest values: written less often).
        self._dirty: set[str] = set()
        self._values_dirty: set[str] = set()
        # For the fleet metrics (another cadence): devices observed since their last tick.
        self._metrics_dirty: set[str] = set()
        self._events: list[DeviceEvent] = []
        self._deadlines: list[tuple[int, str]] = []
        self._sorted_ids: list[str] | None = None
        self._lower_ids: list[str] = []
        # Device ids in the order their last_seen_ms last advanced, i.e. by last_seen (frames
        # are observed in arrival order): a page by last seen without sorting the fleet.
        self._recent: dict[str, None] = {}
        self.reporting = 0  # devices that sent telemetry at least once
        # Boots with stored frames (the ledger, at a restart) of devices the last checkpoint did
        # not have yet: a kill before a device's first checkpoint. Joined to its record when
        # the record is made again (its next birth or frame), so completeness lists them.
        self._stored_boots: dict[str, list[int]] = {}

    # ------------------------------------------------------------------ observations
    def _record(self, device_id: str, now_ms: int, values_only: bool = False) -> DeviceRecord:
        """The device's record, made if new; dirty for the checkpoint (values_only: only its
        telemetry's progress changed, unless it is new) and the fleet metrics."""
        record = self.devices.get(device_id)
        if record is None:
            record = self.devices[device_id] = DeviceRecord(
                device_id, first_seen_ms=now_ms, state_since_ms=now_ms)
            for boot in self._stored_boots.pop(device_id, ()):
                record._note_boot(boot)
            self.by_state[record.state].add(device_id)
            self._sorted_ids = None
            values_only = False
        (self._values_dirty if values_only else self._dirty).add(device_id)
        self._metrics_dirty.add(device_id)
        return record

    def observe_birth(self, device_id: str, birth: Birth, now_ms: int) -> None:
        record = self._record(device_id, now_ms)
        if record.platform != birth.platform or record.firmware != birth.firmware:
            self._count_versions(record, -1)
            record.platform, record.firmware = birth.platform, birth.firmware
            self._count_versions(record, +1)
        record.interval_ms = birth.interval_ms
        record.labels = dict(birth.labels)
        if record.boot is not None and record.boot != birth.boot:
            self._events.append(DeviceEvent(device_id, now_ms, "reboot", boot=birth.boot,
                                            previous_boot=record.boot))
            record.start_boot()  # the old boot's values kept under their names
            record.last_seq = None
        record.boot = birth.boot
        record._note_boot(birth.boot)
        record.birth = birth
        self._touch(record, now_ms)
        if record.state is not DeviceState.ONLINE:
            self._set_state(record, DeviceState.ONLINE, now_ms, "birth")
        self._schedule(record)  # also when the interval changed, or is known only now

    def observe_telemetry(self, device_id: str, telemetry: TelemetryRows, now_ms: int,
                          payload: bytes | None = None) -> None:
        """payload: the frame's bytes, kept as the device's newest frame instead of its
        decoded rows (~250 bytes instead of ~2 KB at 20 samples; decoded when read)."""
        record = self._record(device_id, now_ms, values_only=True)
        self._touch(record, now_ms)
        if not record.frames:
            self.reporting += 1
        record.frames += 1
        if self._is_latest(record, telemetry):
            if record.boot != telemetry.boot:
                record.boot = telemetry.boot
                record._note_boot(telemetry.boot)
                self._dirty.add(device_id)
            record.last_seq = telemetry.seq
            record.newest = telemetry if payload is None else (payload, telemetry.time_ms)
        elif telemetry.boot not in record.boots:  # a past boot's frames (its birth came late)
            self.note_boot(device_id, telemetry.boot)
        if record.state is not DeviceState.ONLINE:
            self._set_state(record, DeviceState.ONLINE, now_ms, "telemetry")
            self._schedule(record)

    def _touch(self, record: DeviceRecord, now_ms: int) -> None:
        if now_ms >= record.last_seen_ms:
            record.last_seen_ms = now_ms
            recent = self._recent
            recent.pop(record.device_id, None)
            recent[record.device_id] = None

    @staticmethod
    def _is_latest(record: DeviceRecord, telemetry: TelemetryRows) -> bool:
        """Is this frame the device's latest word? Not a replay, not a late frame of its
        boot, not a frame of a boot that came before the current one."""
        if telemetry.historical:
            return False
        if record.boot == telemetry.boot:
            return record.last_seq is None or telemetry.seq >= record.last_seq
        boots = record.boots
        if record.boot in boots and telemetry.boot in boots:
            return boots.index(telemetry.boot) > boots.index(record.boot)
        return True  # a boot unknown to the fleet view (its row was lost): take it

    def observe_death(self, device_id: str, boot: int, now_ms: int) -> bool:
        """A death of the device's current boot takes it offline; True if it did. A death of
        a past boot (an old connection's Will delivered after the reboot) changes nothing."""
        record = self.devices.get(device_id)
        if record is None or (record.boot is not None and boot != record.boot):
            return False
        if record.state is DeviceState.OFFLINE:
            return False
        self._set_state(record, DeviceState.OFFLINE, now_ms, "death")
        return True

    def observe_duplicates(self, keys: list[tuple[str, int]]) -> None:
        for device_id, boot in keys:
            record = self.devices.get(device_id)
            if record is not None:
                record.duplicates[boot] = record.duplicates.get(boot, 0) + 1
                self._dirty.add(device_id)
                self._metrics_dirty.add(device_id)

    def observe_quarantined(self, device_id: str, frames: int) -> None:
        """Frames of a known device refused as invalid: counted apart from those received."""
        record = self.devices.get(device_id)
        if record is not None:
            record.quarantined += frames
            self._dirty.add(device_id)
            self._metrics_dirty.add(device_id)

    def note_boot(self, device_id: str, boot: int) -> None:
        """A boot the device stored frames of (its ledger), for the completeness view: known
        after a restart even when the last checkpoint was taken before its first frame."""
        record = self.devices.get(device_id)
        if record is None:
            stored = self._stored_boots.setdefault(device_id, [])
            if boot not in stored:
                stored.append(boot)
        elif boot not in record.boots:
            record.boots.insert(0, boot)
            del record.boots[:-MAX_BOOTS_KEPT]

    def observe_gaps(self, device_id: str) -> None:
        """The device's ledger may now have gaps (checked when read)."""
        self.incomplete.add(device_id)

    def _count_versions(self, record: DeviceRecord, delta: int) -> None:
        if record.platform is not None:
            self.platforms[record.platform] += delta
            if not self.platforms[record.platform]:
                del self.platforms[record.platform]
        if record.firmware is not None:
            self.firmwares[record.firmware] += delta
            if not self.firmwares[record.firmware]:
                del self.firmwares[record.firmware]

    def forget(self, device_id: str) -> bool:
        self._stored_boots.pop(device_id, None)
        record = self.devices.pop(device_id, None)
        if record is None:
            return False
        self.by_state[record.state].discard(device_id)
        self._recent.pop(device_id, None)
        self.reporting -= bool(record.frames)
        self._count_versions(record, -1)
        self.incomplete.discard(device_id)
        self._dirty.discard(device_id)
        self._values_dirty.discard(device_id)
        self._metrics_dirty.discard(device_id)
        self._sorted_ids = None
        return True

    # ------------------------------------------------------------------ lifecycle
    def _set_state(self, record: DeviceRecord, state: DeviceState, now_ms: int,
                   reason: str) -> None:
        previous = record.state
        self.by_state[previous].discard(record.device_id)
        self.by_state[state].add(record.device_id)
        record.state, record.state_since_ms = state, now_ms
        self._dirty.add(record.device_id)
        self._metrics_dirty.add(record.device_id)
        self._events.append(DeviceEvent(record.device_id, now_ms, "state", state=state.value,
                                        previous=None if record.new else previous.value,
                                        boot=record.boot, reason=reason))
        record.new = False

    def _schedule(self, record: DeviceRecord) -> None:
        """Queue an online device at its late deadline unless an entry due earlier exists."""
        if record.state is not DeviceState.ONLINE or not record.interval_ms:
            return
        due = (max(record.last_seen_ms, self.started_ms)
               + int(record.interval_ms * self.late_after))
        if record.due_ms is None or due < record.due_ms:
            self._queue(record, due)

    def _queue(self, record: DeviceRecord, due_ms: int) -> None:
        record.due_ms = due_ms
        heapq.heappush(self._deadlines, (due_ms, record.device_id))

    def sweep(self, now_ms: int, limit: int | None = None) -> bool:
        """Move devices whose deadline passed to late or offline (events via take_events).
        With a limit, stop after that many state changes; True if deadlines due remain."""
        heap = self._deadlines
        changes = 0
        while heap and heap[0][0] <= now_ms:
            if limit is not None and changes >= limit:
                return True
            due, device_id = heapq.heappop(heap)
            record = self.devices.get(device_id)
            if record is None or record.due_ms != due:
                continue  # forgotten, or a stale entry: the live one is elsewhere in the heap
            record.due_ms = None
            if record.state is DeviceState.OFFLINE or not record.interval_ms:
                continue
            base = max(record.last_seen_ms, self.started_ms)
            late_at = base + int(record.interval_ms * self.late_after)
            offline_at = base + int(record.interval_ms * self.offline_after)
            if now_ms >= offline_at:
                self._set_state(record, DeviceState.OFFLINE, now_ms, "timeout")
                changes += 1
            elif now_ms >= late_at:
                if record.state is DeviceState.ONLINE:
                    self._set_state(record, DeviceState.LATE, now_ms, "timeout")
                    changes += 1
                self._queue(record, offline_at)
            else:
                self._queue(record, late_at)
        return False

    def take_events(self) -> list[DeviceEvent]:
        events, self._events = self._events, []
        return events

    def requeue_events(self, events: list[DeviceEvent]) -> None:
        """Events taken but not written (a full disk): first in line again, in order."""
        self._events[:0] = events

    def mark_dirty(self, device_ids: list[str]) -> None:
        """Devices whose checkpoint did not land: written at the next one."""
        self._dirty.update(d for d in device_ids if d in self.devices)

    # ------------------------------------------------------------------ views
    def sorted_ids(self) -> list[str]:
        if self._sorted_ids is None:
            self._sorted_ids = sorted(self.devices)
            self._lower_ids = [device_id.lower() for device_id in self._sorted_ids]
        return self._sorted_ids

    def ids_containing(self, needle: str) -> list[str]:
        """Sorted ids that contain needle, ignoring case (a scan of strings, no records)."""
        ids = self.sorted_ids()
        needle = needle.lower()
        return [i for i, low in zip(ids, self._lower_ids, strict=True) if needle in low]

    def by_last_seen(self, newest_first: bool) -> Iterator[str]:
        """Device ids by last seen (ties in the order they were seen)."""
        return iter(reversed(self._recent) if newest_first else self._recent)

    def counts(self) -> dict[str, int]:
        return {state.value: len(ids) for state, ids in self.by_state.items()}

    # ------------------------------------------------------------------ persistence
    def take_dirty_rows(self) -> list[tuple[Any, ...]]:
        return self.rows_of(self.take_dirty_ids())

    def take_dirty_ids(self, values: bool = True) -> list[str]:
        """The devices changed since the last call; their rows are built by the caller, in
        chunks (a row costs ~15 µs: 100,000 in one go would stall the event loop 1.5 s).
        values=False: only those with more than their telemetry's progress to save (their
        rows carry their newest values too: not dirty any more either way)."""
        dirty = self._dirty
        if values:
            dirty |= self._values_dirty
            self._values_dirty.clear()
        else:
            self._values_dirty -= dirty
        ids = list(dirty)
        dirty.clear()
        return ids

    def take_metrics_dirty(self) -> list[str]:
        """The devices observed (or changed state) since the last call: the fleet metrics'
        own set, apart from the checkpoint's."""
        dirty = list(self._metrics_dirty)
        self._metrics_dirty.clear()
        return dirty

    def rows_of(self, device_ids: list[str]) -> list[tuple[Any, ...]]:
        devices = self.devices
        return [devices[d].row() for d in device_ids if d in devices]

    def has_events(self) -> bool:
        return bool(self._events)

    def load(self, rows: list[sqlite3.Row],
             birth_of: Callable[[str, int], Birth | None] = lambda d, b: None) -> None:
        for row in rows:
            record = record_from_row(row)
            if record.boot is not None:
                record.birth = birth_of(record.device_id, record.boot)
                record._note_boot(record.boot)
            self.devices[record.device_id] = record
            self.by_state[record.state].add(record.device_id)
            self.reporting += bool(record.frames)
            self._count_versions(record, +1)
            if record.online and record.interval_ms:
                # Evaluated at the first sweep: timeouts count from the start at the earliest.
                self._queue(record, max(record.last_seen_ms, self.started_ms))
        self._sorted_ids = None
        devices = self.devices
        self._recent = dict.fromkeys(sorted(devices, key=lambda d: devices[d].last_seen_ms))
