"""remote_write: the Prometheus remote-write format, pure.

The wire format (protobuf WriteRequest by hand, snappy, varints, stale NaN; its constants live
here and only here) and series encoding (labels to bytes, once per series). It sits under the
pipeline (entries are encoded once, at ingest), the buffer (stale markers) and the forwarders,
which is why it is its own package rather than part of forward/. Imports nothing of gateway.
"""
