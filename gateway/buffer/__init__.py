"""buffer: the SQLite store between the pipeline and the forwarders.

Owns the database file (connections, migrations, the start-up check and salvage), all SQL of the
data path, the entry cache, and the data-dir lock. May import: gateway.remote_write (stale
markers are written as entries), the foundation modules (errors, settings, seq_ranges) and
device_protocol. Never the pipeline, the forwarders or the API.
"""
