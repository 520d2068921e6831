"""ingest: the MQTT side, first on the data path.

Owns the broker session (persistent, manual acknowledgement), the bounded hand-over of received
messages to the event loop (the inbox) and the PUBACKs sent after a commit. Paho lives here and
nowhere else. May import: gateway.settings, gateway.errors, gateway.metrics, device_protocol.
"""
