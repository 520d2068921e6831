"""forward: from the buffer to each remote-write endpoint.

Owns the forwarder per endpoint (forwarder.py: cursor, one request in flight, live lane), what
a request carries (gather.py: frames from the entry cache, else read back; order.py: in which
order), what each class of answer means (policy.py: retry, pause, dead letter, shrink) and the
HTTP client (client.py: outcomes as values). May import: gateway.buffer, gateway.remote_write,
the foundation modules and device_protocol. Never the pipeline (they meet in the buffer) or the
API.
"""
