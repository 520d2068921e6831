"""The read-only SQL the operator pages: a device's events, quarantined frames, dead letters,
and the row count of each table (`fleetgate db status`).

Plain functions over a connection, run by `Database.read`; the buffer's own SQL, the data
path's, is gateway.buffer.store.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

from gateway.fleet.state import DeviceEvent

# device_events has a column per DeviceEvent field, in the same order (store.insert_events).
EVENT_COLUMNS = tuple(field.name for field in dataclasses.fields(DeviceEvent))
TABLES_COUNTED = ("frames", "held", "births", "ledger", "devices", "quarantine", "dead_letters")


def device_events(conn: sqlite3.Connection, device_id: str, limit: int,
                  before_id: int | None = None) -> list[dict[str, Any]]:
    rows = conn.execute(
        f"SELECT id, {', '.join(EVENT_COLUMNS)} FROM device_events WHERE device_id = ?"
        " AND id < ? ORDER BY id DESC LIMIT ?",
        (device_id, before_id if before_id is not None else 2**63 - 1, limit)).fetchall()
    return [dict(zip(("id", *EVENT_COLUMNS), row, strict=True)) for row in rows]


def quarantine_rows(conn: sqlite3.Connection, limit: int = 100) -> list[dict[str, object]]:
    """The newest quarantined frames; `size` is the frame's (rows from before migration 6
    only know the size of their stored excerpt)."""
    rows = conn.execute(
        "SELECT id, received_ms, topic, device_id, reason, detail,"
        " COALESCE(size, LENGTH(payload)) FROM quarantine ORDER BY id DESC LIMIT ?",
        (limit,)).fetchall()
    keys = ("id", "received_ms", "topic", "device_id", "reason", "detail", "size")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def dead_letter_rows(conn: sqlite3.Connection, limit: int = 100) -> list[dict[str, object]]:
    rows = conn.execute(
        "SELECT id, endpoint, frame_id, created_ms, status, reason, series FROM dead_letters"
        " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    keys = ("id", "endpoint", "frame_id", "created_ms", "status", "reason", "series")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def table_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in TABLES_COUNTED}
