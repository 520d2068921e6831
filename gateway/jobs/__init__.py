"""jobs: the gateway's background work, one small job per loop, beside the data path.

Owns the lifecycle sweep (late/offline devices, their events, stale markers of a boot gone
silent), the fleet metrics written through the buffer, the fleet checkpoint, the maintenance
(pruning past boots' dedup state and old device events) and the gauges (device counts, each
endpoint's oldest unsent age and send rate); and the runner that calls each job's
`tick(now_ms)` on its schedule, counting a failed tick and going on at the next. Each job takes
only the collaborators it needs, so a test drives its ticks with explicit times.
May import: gateway.pipeline, gateway.forward, gateway.buffer, gateway.fleet,
gateway.remote_write, the foundation modules and device_protocol. Never the API or gateway.app.
"""
