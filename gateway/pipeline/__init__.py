"""pipeline: decode -> dedup -> hold/resolve -> compile, then one group commit a batch.

Owns the seq-range ledger (dedup), births and each boot's clock correction, held frames, the
frame compiler (remote-write entries encoded once, at ingest), the per-device series budget,
and the reading of a stored frame back into entries (readback.py, handed to the buffer).
`plan.py` decides a batch without I/O and without touching the pipeline's state; `stage.py`
commits the plan through the buffer, then applies it and acknowledges. May import:
gateway.ingest (the messages it consumes), gateway.buffer (where it commits), gateway.fleet
(what it tells the fleet), gateway.remote_write, the foundation modules and device_protocol.
Never gateway.forward: the forwarders meet it only in the buffer.
"""
