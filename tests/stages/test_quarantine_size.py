"""The quarantine's `size` is the frame's size, not the size of the excerpt kept of it.

Only the first store.QUARANTINE_PAYLOAD_BYTES of a quarantined frame are stored; an operator
looking at a "frame too large" needs the real size (issue 11, finding 7).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgpack

from gateway.buffer import store
from gateway.buffer.db import apply_migrations
from gateway.fleet import queries
from tests.support.pipeline_harness import Harness, msg, run


def test_an_oversize_frame_is_listed_with_its_own_size(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    oversized = msgpack.packb({"v": 1, "b": 1, "s": 0, "t": 0, "m": [], "pad": "x" * 70_000})
    small_bad = b"\xc1garbage"

    async def go() -> None:
        p = await h.open()
        await p.handle([msg("fleet/dev-0001/telemetry", oversized),
                        msg("fleet/dev-0001/telemetry", small_bad)])
        rows = await h.db.read(queries.quarantine_rows)
        await h.db.close()
        assert [(r["reason"], r["size"]) for r in rows] == [
            ("not msgpack", len(small_bad)), ("frame too large", len(oversized))]

    run(go)
    assert len(oversized) > store.QUARANTINE_PAYLOAD_BYTES
    assert h.rows("SELECT LENGTH(payload) FROM quarantine ORDER BY id") == [
        (store.QUARANTINE_PAYLOAD_BYTES,), (len(small_bad),)]


def test_rows_from_before_the_size_column_report_their_excerpt(tmp_path: Path) -> None:
    # A database written by a gateway before migration 6 has no size: its rows keep reporting
    # LENGTH(payload) (the most that is known), new rows the frame's size.
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    try:
        apply_migrations(conn)
        conn.execute("INSERT INTO quarantine (received_ms, topic, device_id, reason, detail,"
                     " payload) VALUES (1, 'fleet/d/telemetry', 'd', 'r', 'old row', x'0102')")
        store.write_batch(conn, store.BatchWrite(quarantine=[
            (2, "fleet/d/telemetry", "d", "frame too large", "new row", b"\x01" * 10, 99_999)]))
        assert [(r["detail"], r["size"]) for r in queries.quarantine_rows(conn)] == [
            ("new row", 99_999), ("old row", 2)]
    finally:
        conn.close()
