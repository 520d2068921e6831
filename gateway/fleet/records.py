"""A device as the fleet view knows it: its record, its lifecycle states, the events it emits.

`DeviceRecord` holds what a device last said (birth, newest series values, counters per boot)
and how it is checkpointed: `row()` to SQLite, `record_from_row()` back. `DeviceEvent` is a
state change or a reboot, as stored and streamed. Plain data: `FleetState`
(gateway.fleet.state) decides when records change state and keeps the deadline heap.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack

from device_protocol import Birth, HistogramValue, Labels, TelemetryRows, decode_telemetry_rows

MAX_BOOTS_KEPT = 8  # per device, for the completeness view; older boots' stats are dropped


class DeviceState(StrEnum):
    ONLINE = "online"
    LATE = "late"
    OFFLINE = "offline"


@dataclass(slots=True, frozen=True)
class DeviceEvent:
    """A state change (kind "state") or a reboot (kind "reboot"), as stored and streamed."""

    device_id: str
    ts_ms: int
    kind: str
    state: str | None = None
    previous: str | None = None
    boot: int | None = None
    previous_boot: int | None = None
    reason: str | None = None

    def as_dict(self, event_id: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": event_id, "device_id": self.device_id, "ts_ms": self.ts_ms,
                               "kind": self.kind, "boot": self.boot}
        if self.kind == "state":
            out.update(state=self.state, previous=self.previous, reason=self.reason)
        else:
            out["previous_boot"] = self.previous_boot
        return out


# The newest value of a series: a number, or for a histogram (count, sum) and nothing else.
SeriesValue = float | HistogramValue
SeriesId = tuple[str, Labels]  # (metric name, the sample's own labels)


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
    state: DeviceState = DeviceState.OFFLINE
    state_since_ms: int = 0
    birth: Birth | None = None  # names the aliases of the raw samples below
    # What the device last said, as bytes (1 object instead of ~60 a device at 20 series: ~0.5
    # instead of ~4 KB): msgpack [samples, restored] (see row()). samples: the newest raw
    # sample per (alias or name, own labels) of the current boot, named only when read;
    # restored: series by name from a past boot (a new boot may reuse aliases) or an old row.
    packed: bytes | None = None
    # The newest frame, folded into `packed` only when read or checkpointed: the hot path
    # stores one reference per frame instead of one entry per sample. A metric sent only in
    # frames between two folds is missed by this view (it still reaches Prometheus).
    # Either decoded, or as (payload, its time on the gateway's clock): decoded when folded.
    newest: TelemetryRows | tuple[bytes, int] | None = None
    frames: int = 0  # telemetry frames accepted (not duplicates), all boots
    quarantined: int = 0  # frames refused as invalid (their seqs stay free), all boots
    duplicates: dict[int, int] = field(default_factory=dict)  # per boot
    boots: list[int] = field(default_factory=list)  # newest last, at most MAX_BOOTS_KEPT
    due_ms: int | None = None  # when its live entry in FleetState's deadline heap is due
    # Its rarely changing fleet metrics (up, duplicates, quarantined, missing) as last written
    # by the fleet metrics job (gateway.fleet.series.DeviceMetrics): re-sent when they differ.
    metrics_sent: tuple[float, ...] | None = None
    new: bool = True  # no state change yet: its first event has previous = None

    @property
    def online(self) -> bool:
        return self.state is not DeviceState.OFFLINE

    def fold(self) -> None:
        """The newest frame into `packed`."""
        if self.newest is not None:
            self._view()

    def _view(self) -> tuple[dict[tuple[int | str, Labels], tuple[SeriesValue, int]],
                             dict[SeriesId, tuple[SeriesValue, int]]]:
        """(samples, restored) as dicts, the newest frame folded in (and packed again)."""
        samples, restored = _unpacked(self.packed) if self.packed is not None else ({}, {})
        frame = self.newest
        if frame is not None:
            self.newest = None
            if isinstance(frame, tuple):
                payload, base_ms = frame
                rows = decode_telemetry_rows(payload).rows  # validated at its ingest
            else:
                base_ms, rows = frame.time_ms, frame.rows
            for metric, value, dt_ms, labels in rows:
                samples[metric, labels] = (value, base_ms + dt_ms)
            self.packed = _pack([list(samples.items()), list(restored.items())])
        return samples, restored

    def series(self) -> dict[SeriesId, tuple[SeriesValue, int]]:
        """Every series' newest value and timestamp (ms), by (name, own labels); a
        histogram's value has its count and sum (not its buckets)."""
        samples, restored = self._view()
        out = dict(restored)
        names = {m.alias: m.name for m in self.birth.metrics} if self.birth else {}
        for (metric, labels), value_ts in samples.items():
            name = metric if isinstance(metric, str) else names.get(metric, f"alias_{metric}")
            out[name, labels] = value_ts
        return out

    def start_boot(self) -> None:
        """A new boot (it may declare other aliases): the values so far kept by name."""
        self.packed = _pack([[], list(self.series().items())])

    def latest(self) -> dict[str, tuple[float, int]]:
        """Series key (name and own labels, Prometheus-style) -> (value, timestamp ms)."""
        out: dict[str, tuple[float, int]] = {}
        for (name, labels), (value, ts) in self.series().items():
            if isinstance(value, HistogramValue):
                out[series_key(name + "_count", labels)] = (value.count, ts)
                out[series_key(name + "_sum", labels)] = (value.sum, ts)
            else:
                out[series_key(name, labels)] = (float(value), ts)
        return out

    def _note_boot(self, boot: int) -> None:
        if boot not in self.boots:
            self.boots.append(boot)
            del self.boots[:-MAX_BOOTS_KEPT]

    def row(self) -> tuple[Any, ...]:
        """The checkpoint row. `latest` is msgpack (bytes): [samples, restored], each a list of
        [[alias or name, labels], [value, ts]] as held here, aliases resolved by the boot's
        birth when loaded; a histogram's value is [count, sum]. One C call instead of naming
        and JSON-encoding every series: ~5x cheaper a row (bench/fleet_jobs.py). Rows of
        earlier versions are JSON text (see record_from_row)."""
        self.fold()
        latest = self.packed if self.packed is not None else _EMPTY
        stats = {"frames": self.frames, "quarantined": self.quarantined,
                 "duplicates": {str(b): n for b, n in self.duplicates.items()},
                 "boots": self.boots}
        return (self.device_id, self.platform, self.firmware, self.boot, self.interval_ms,
                json.dumps(self.labels), self.first_seen_ms, self.last_seen_ms, self.last_seq,
                int(self.online), latest, self.state.value, self.state_since_ms,
                json.dumps(stats))


def _histogram_as_list(value: object) -> list[float]:
    if isinstance(value, HistogramValue):
        return [value.count, value.sum]  # its buckets are not kept (as in the JSON rows)
    raise TypeError(f"cannot checkpoint {type(value).__name__}")


_pack = msgpack.Packer(default=_histogram_as_list, autoreset=True).pack
_EMPTY = _pack([[], []])


def series_key(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"


def _unpacked(
    packed: bytes,
) -> tuple[dict[tuple[int | str, Labels], tuple[SeriesValue, int]],
           dict[SeriesId, tuple[SeriesValue, int]]]:
    """(samples, restored) of a msgpack `latest` (DeviceRecord.row)."""
    samples, restored = msgpack.unpackb(packed)
    return ({(sys.intern(metric) if isinstance(metric, str) else metric, _labels(labels)):
             (_value(value), int(ts)) for (metric, labels), (value, ts) in samples},
            {(sys.intern(str(name)), _labels(labels)): (_value(value), int(ts))
             for (name, labels), (value, ts) in restored})


def _labels(pairs: list[list[str]]) -> Labels:
    """Names and values interned: the fleet's devices share them (one string, not 100,000)."""
    return tuple((sys.intern(str(k)), sys.intern(str(v))) for k, v in pairs)


def _value(value: float | list[float]) -> SeriesValue:
    if isinstance(value, list):
        return HistogramValue(float(value[0]), float(value[1]), ())
    return float(value)


def _restored_series(text: str | None) -> dict[SeriesId, tuple[SeriesValue, int]]:
    """Series by name of a JSON `latest` (the rows of versions before msgpack)."""
    data = json.loads(text or "[]")
    out: dict[SeriesId, tuple[SeriesValue, int]] = {}
    if isinstance(data, dict):  # schema v1-v2 checkpoints: {series key: [value, ts]}
        for key, (value, ts) in data.items():
            out[key, ()] = (float(value), int(ts))
        return out
    for name, labels, value, ts in data:
        own = tuple((str(k), str(v)) for k, v in labels)
        if isinstance(value, list):
            out[name, own] = (HistogramValue(float(value[0]), float(value[1]), ()), int(ts))
        else:
            out[name, own] = (float(value), int(ts))
    return out


def record_from_row(row: sqlite3.Row) -> DeviceRecord:
    """A checkpointed device row (any schema version) as a record; its birth is set by the
    caller, which knows where births are stored."""
    keys = row.keys()
    state = (DeviceState(row["state"]) if "state" in keys and row["state"]
             else DeviceState.ONLINE if row["online"] else DeviceState.OFFLINE)
    stats = json.loads(row["stats"] or "{}") if "stats" in keys else {}
    latest = row["latest"]
    if not isinstance(latest, bytes):  # a JSON row of the versions before
        latest = _pack([[], list(_restored_series(latest).items())])
    record = DeviceRecord(
        device_id=row["device_id"], platform=row["platform"], firmware=row["firmware"],
        boot=row["boot"], interval_ms=row["interval_ms"],
        labels=json.loads(row["labels"] or "{}"), first_seen_ms=row["first_seen_ms"],
        last_seen_ms=row["last_seen_ms"], last_seq=row["last_seq"], state=state,
        state_since_ms=(row["state_since_ms"] if "state_since_ms" in keys
                        and row["state_since_ms"] is not None
                        else row["last_seen_ms"]) or 0,
        packed=latest,
        frames=int(stats.get("frames", 0)),
        quarantined=int(stats.get("quarantined", 0)),
        duplicates={int(b): int(n) for b, n in stats.get("duplicates", {}).items()},
        boots=[int(b) for b in stats.get("boots", [])])
    record.new = False
    return record
