"""buffer: the SQLite buffer between the pipeline (its writer) and the forwarders (its readers).

Owns the `Buffer` (buffer.py: frame ids in commit order, the committed position, frames and
bytes held and what a full buffer does, the new-data and progress signals, the entry cache and
the decoder for frames read back), all SQL of the data path (store.py; stale markers in
markers.py), the database file (db.py: aiosqlite connections and migrations; recovery.py: the
start-up check and salvage, generic in sqlite_file/salvage/salvage_reader, fleetgate's own
rebuild in rebuild.py) and the data-dir lock. May import: gateway.remote_write (stale markers
are entries), the foundation modules (errors, settings, metrics, seq_ranges) and
device_protocol. Never the pipeline, the forwarders, the fleet or the API: they import it.
"""
