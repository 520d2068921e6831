"""fleetgate: MQTT telemetry in, durable SQLite buffer, Prometheus remote-write out."""

__version__ = "0.1.0"
