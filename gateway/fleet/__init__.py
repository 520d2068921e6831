"""fleet: what the operator sees, beside the data path.

Owns device records (records.py: the device as data and its saved row) and the fleet's state
and lifecycle (state.py: online/late/offline by a deadline heap, events), completeness per boot,
the fleet's own metrics as series (series.py), the bounded event stream (events.py) and the
read-only queries the API pages (queries.py). Pure but for those queries. May import:
gateway.remote_write (fleet metrics as entries), the foundation modules and device_protocol.
"""
