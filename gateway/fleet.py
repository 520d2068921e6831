"""Fleet state in memory: what each device last said. Checkpointed to SQLite periodically.

This is the first cut the API needs (issue 2); lifecycle states and the completeness ledger
build on it.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass, field

from device_protocol import Birth, HistogramValue, Labels, TelemetryRows


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
    birth: Birth | None = None  # names the aliases of the raw samples below
    # Latest raw sample per (alias or name, own labels): one dict store per sample on the hot
    # path; names and labels are formatted only when read.
    samples: dict[tuple[int | str, Labels], tuple[float | HistogramValue, int]] = field(
        default_factory=dict)
    restored: dict[str, tuple[float, int]] = field(default_factory=dict)  # from a checkpoint
    # The newest frame, folded into `samples` only when read or checkpointed (every 5 s): the
    # hot path stores one reference per frame instead of one entry per sample. A metric sent
    # only in frames between two folds is missed by this view (it still reaches Prometheus).
    newest: TelemetryRows | None = None

    def fold(self) -> None:
        frame = self.newest
        if frame is None:
            return
        self.newest = None
        samples = self.samples
        base_ms = frame.time_ms
        for metric, value, dt_ms, labels in frame.rows:
            samples[metric, labels] = (value, base_ms + dt_ms)

    def latest(self) -> dict[str, tuple[float, int]]:
        """Series (metric name and the sample's own labels) -> (value, timestamp ms)."""
        self.fold()
        out = dict(self.restored)
        names = {m.alias: m.name for m in self.birth.metrics} if self.birth else {}
        for (metric, labels), (value, ts) in self.samples.items():
            name = metric if isinstance(metric, str) else names.get(metric, f"alias_{metric}")
            key = series_key(name, labels)
            if isinstance(value, HistogramValue):
                out[key + "_count"] = (value.count, ts)
                out[key + "_sum"] = (value.sum, ts)
            else:
                out[key] = (float(value), ts)
        return out

    def row(self) -> tuple:
        return (self.device_id, self.platform, self.firmware, self.boot, self.interval_ms,
                json.dumps(self.labels), self.first_seen_ms, self.last_seen_ms, self.last_seq,
                int(self.online), json.dumps({k: [_json_float(v), t]
                                              for k, (v, t) in self.latest().items()}))


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
        if record.birth is not None and record.birth.boot != birth.boot:
            record.fold()
            record.restored = record.latest()  # keep the old boot's values under their names
            record.samples.clear()  # a new boot may declare other aliases
        record.birth = birth
        record.last_seen_ms = max(record.last_seen_ms, now_ms)
        record.online = True

    def observe_telemetry(self, device_id: str, telemetry: TelemetryRows, now_ms: int) -> None:
        record = self._record(device_id, now_ms)
        record.last_seen_ms = max(record.last_seen_ms, now_ms)
        record.online = True
        if telemetry.historical or (record.boot == telemetry.boot and record.last_seq is not None
                                    and telemetry.seq < record.last_seq):
            return  # a replay or a late frame: not the device's latest word
        record.boot = telemetry.boot
        record.last_seq = telemetry.seq
        record.newest = telemetry

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
                restored={k: (float(v), int(t)) for k, (v, t) in latest.items()})

    def counts(self) -> dict[str, int]:
        online = sum(1 for d in self.devices.values() if d.online)
        return {"online": online, "offline": len(self.devices) - online}
