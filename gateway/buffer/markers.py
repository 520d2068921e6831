"""Stale markers: a closed boot's series end, written as a buffer frame of the gateway's own.

The pipeline decides when a boot closes (a death, a newer boot's birth, an offline timeout) and
hands over a BootClose; here, in the same transaction, the boot's recorded series (table
boot_series, filled as its series first appear) become stale-marker entries in one frame of
kind KIND_ENTRIES, and the boot is remembered as closed (table closed_boots) so no marker is
sent twice.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from gateway.buffer.store import KIND_ENTRIES
from gateway.remote_write.wire import STALE_NAN, encode_entry

# Prometheus shows a series for 5 minutes after its newest sample (the query lookback): a boot
# whose newest sample is older than that is already gone from dashboards, and markers for it
# would only be refused as too old by receivers that keep no history that far back.
STALE_LOOKBACK_MS = 300_000


@dataclass(frozen=True, slots=True)
class BootClose:
    """Stale markers for every series a boot wrote, as one buffer frame with a given id."""

    frame_id: int
    device_id: str
    boot: int
    stale_ms: int | None  # 1 ms after the boot's newest sample stored; None: no samples
    # The boot's fleet_device_info series (stamped at its birth's arrival, on the gateway's
    # clock) and when it ends: before the next boot's info sample, after its own.
    info_labels: bytes | None = None
    info_ms: int = 0


def write_closes(conn: sqlite3.Connection, closes: Sequence[BootClose], now_ms: int,
                 reopened: Collection[tuple[str, int]] = ()) -> list[tuple[int, list[bytes]]]:
    """Insert each close as a frame of stale-marker entries (none for a boot older than the
    lookback), in the caller's transaction: after that batch's boot_series rows, so series
    first seen in the same batch are closed too. Returns (frame id, entries) of each."""
    out: list[tuple[int, list[bytes]]] = []
    recent = now_ms - STALE_LOOKBACK_MS
    for close in closes:
        entries = []
        if close.stale_ms is not None and close.stale_ms >= recent:
            entries = [encode_entry(label_bytes, STALE_NAN, close.stale_ms)
                       for label_bytes in boot_series(conn, close.device_id, close.boot)]
        if close.info_labels is not None and close.info_ms >= recent:
            entries.append(encode_entry(close.info_labels, STALE_NAN, close.info_ms))
        if (close.device_id, close.boot) not in reopened:  # no frame of it after its close
            conn.execute("INSERT OR IGNORE INTO closed_boots (device_id, boot) VALUES (?,?)",
                         (close.device_id, close.boot))
        conn.execute("INSERT INTO frames (id, kind, device_id, boot, seq, received_ms, payload)"
                     " VALUES (?,?,?,?,?,?,?)", (close.frame_id, KIND_ENTRIES, close.device_id,
                                                 close.boot, None, now_ms, b"".join(entries)))
        out.append((close.frame_id, entries))
    return out


def boot_series(conn: sqlite3.Connection, device_id: str, boot: int) -> list[bytes]:
    """The encoded labels of every series the boot wrote (for its stale markers)."""
    return [row[0] for row in conn.execute(
        "SELECT labels FROM boot_series WHERE device_id = ? AND boot = ?", (device_id, boot))]
