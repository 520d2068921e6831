"""Fleet state in memory: what each device last said. Checkpointed to SQLite periodically.

This is the first cut the API needs (issue 2); lifecycle states and the completeness ledger
build on it.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass, field

from device_protocol import Birth, HistogramSample, Telemetry


@dataclass(slots=True)
class DeviceRecord:
    device_id: str
    platform: str | None = None
    firmware: str | None = None
    boot: int | None = None
    interval_ms: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    first_seen_ms: int = 0
    last_seen_ms: int = 0
    last_seq: int | None = None
    online: bool = False
    latest: dict[str, tuple[float, int]] = field(default_factory=dict)  # series -> (value, ts)

    def row(self) -> tuple:
        return (self.device_id, self.platform, self.firmware, self.boot, self.interval_ms,
                json.dumps(self.labels), self.first_seen_ms, self.last_seen_ms, self.last_seq,
                int(self.online), json.dumps({k: [_json_float(v), t]
                                              for k, (v, t) in self.latest.items()}))


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def series_key(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"


class FleetState:
    def __init__(self) -> None:
        self.devices: dict[str, DeviceRecord] = {}
        self._dirty: set[str] = set()
        self._birth_labels: dict[str, tuple[tuple[str, str], ...]] = {}

    def _record(self, device_id: str, now_ms: int) -> DeviceRecord:
        record = self.devices.get(device_id)
        if record is None:
            record = self.devices[device_id] = DeviceRecord(device_id, first_seen_ms=now_ms)
        self._dirty.add(device_id)
        return record

    def observe_birth(self, device_id: str, birth: Birth, now_ms: int) -> None:
        record = self._record(device_id, now_ms)
        record.platform, record.firmware = birth.platform, birth.firmware
        record.boot, record.interval_ms = birth.boot, birth.interval_ms
        record.labels = dict(birth.labels)
        record.last_seen_ms = max(record.last_seen_ms, now_ms)
        record.online = True
        self._birth_labels[device_id] = birth.labels

    def observe_telemetry(self, device_id: str, telemetry: Telemetry, now_ms: int) -> None:
        record = self._record(device_id, now_ms)
        record.last_seen_ms = max(record.last_seen_ms, now_ms)
        record.online = True
        if telemetry.historical or (record.boot == telemetry.boot and record.last_seq is not None
                                    and telemetry.seq < record.last_seq):
            return  # a replay or a late frame: not the device's latest word
        record.boot = telemetry.boot
        record.last_seq = telemetry.seq
        birth_labels = set(self._birth_labels.get(device_id, ()))
        latest = record.latest
        for sample in telemetry.samples:
            own = tuple(pair for pair in sample.labels if pair not in birth_labels)
            key = series_key(sample.name, own)
            if isinstance(sample, HistogramSample):
                latest[key + "_count"] = (sample.count, sample.timestamp_ms)
                latest[key + "_sum"] = (sample.sum, sample.timestamp_ms)
            else:
                latest[key] = (sample.value, sample.timestamp_ms)

    def observe_death(self, device_id: str, now_ms: int) -> None:
        record = self._record(device_id, now_ms)
        record.online = False

    def take_dirty_rows(self) -> list[tuple]:
        rows = [self.devices[d].row() for d in self._dirty]
        self._dirty.clear()
        return rows

    def load(self, rows: list[sqlite3.Row]) -> None:
        for row in rows:
            latest = json.loads(row["latest"] or "{}")
            self.devices[row["device_id"]] = DeviceRecord(
                device_id=row["device_id"], platform=row["platform"], firmware=row["firmware"],
                boot=row["boot"], interval_ms=row["interval_ms"],
                labels=json.loads(row["labels"] or "{}"), first_seen_ms=row["first_seen_ms"],
                last_seen_ms=row["last_seen_ms"], last_seq=row["last_seq"],
                online=bool(row["online"]),
                latest={k: (float(v), int(t)) for k, (v, t) in latest.items()})
            self._birth_labels[row["device_id"]] = tuple(
                sorted(self.devices[row["device_id"]].labels.items()))

    def counts(self) -> dict[str, int]:
        online = sum(1 for d in self.devices.values() if d.online)
        return {"online": online, "offline": len(self.devices) - online}
