"""pipeline: decode -> dedup -> hold/resolve -> compile, then one group commit a batch.

Owns the seq-range ledger (dedup), births and each boot's clock correction, the frame compiler
(remote-write entries encoded once, at ingest) and the per-device series budget. Everything but
`stage.py` is pure. May import: gateway.ingest (the messages it consumes), gateway.buffer (where
it commits), gateway.fleet (what it tells the fleet), gateway.remote_write, the foundation
modules (errors, settings, metrics, backoff, seq_ranges) and device_protocol.
"""
