"""fleet: what the operator sees, beside the data path.

Owns device records and lifecycle (online/late/offline, events), completeness per boot, the
fleet's own metrics as series, and the bounded event stream. Pure but for the queries it hands
the API. May import: gateway.remote_write (fleet metrics as entries), the foundation modules and
device_protocol.
"""
