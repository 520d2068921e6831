"""Forgetting past boots: ledgers and births of old boots go, the current boot stays."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.buffer import store
from gateway.buffer.db import apply_migrations, connect

DAY = 86_400_000


def setup_db(path: Path) -> sqlite3.Connection:
    conn = connect(path, "normal")
    apply_migrations(conn)
    return conn


def device_row(device_id: str, boot: int) -> tuple:
    return (device_id, "esp32", "1.0", boot, 1000, "{}", 0, 0, 0, 1, "[]", "online", 0, "{}")


def test_prune_forgets_old_boots_but_never_the_current_one(tmp_path: Path) -> None:
    conn = setup_db(tmp_path / "db")
    now = 100 * DAY
    batch = store.BatchWrite(
        births=[("a", 1, now - 40 * DAY, b"old", 0), ("a", 2, now - 35 * DAY, b"current", 0),
                ("b", 7, now - 1 * DAY, b"recent", 0)],
        ledger=[("a", 1, "0-10", now - 40 * DAY, None), ("a", 2, "0-10", now - 35 * DAY, None),
                ("b", 7, "0-3", now - 1 * DAY, None)],
        held=[("c", 9, 0, now - 31 * DAY, b"xx"), ("c", 9, 1, now - 1 * DAY, b"yy")])
    conn.execute("BEGIN")
    store.write_batch(conn, batch)
    store.checkpoint_devices(conn, [device_row("a", 2), device_row("b", 7)])
    conn.execute("COMMIT")

    conn.execute("BEGIN")
    ledger, births, held = store.prune_dedup_state(conn, now - 30 * DAY)
    conn.execute("COMMIT")

    assert ledger == [("a", 1)]
    assert births == [("a", 1)]
    assert held == 1
    assert conn.execute("SELECT device_id, boot FROM ledger ORDER BY 1, 2").fetchall() == [
        ("a", 2), ("b", 7)]
    assert conn.execute("SELECT seq FROM held").fetchall() == [(1,)]
    assert conn.execute(
        "SELECT value FROM counters WHERE name = 'dropped_held_without_birth'").fetchall() == [(1,)]
