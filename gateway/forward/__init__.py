"""forward: from the buffer to each remote-write endpoint.

Owns the forwarder per endpoint (cursor, one request in flight, live lane), what goes in a
request and in which order, what each class of answer means (retry, pause, dead letter, shrink)
and the HTTP client. May import: gateway.buffer, gateway.remote_write, the foundation modules
and device_protocol. Never the pipeline or the API.
"""
