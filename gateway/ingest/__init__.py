"""ingest: the MQTT side, first on the data path.

Owns the broker session (persistent, manual acknowledgement), the bounded hand-over of received
messages to the event loop (the inbox) and the PUBACKs sent after a commit. Paho lives here and
nowhere else. May import: gateway.settings, gateway.errors, gateway.metrics, device_protocol.

Modules:
  inbox     InboundMessage and the bounded Inbox, paho's thread -> the event loop (no paho)
  publish   the MQTT 5 PUBLISH parser: bytes in, (topic, payload, packet id) or PublishRefused
  fastpath  paho's client trimmed through private hooks (`mqtt_fast_path`, the default)
  mqtt      MqttIngest, the paho adapter: session, reconnects, acks; fast path or stock paho
"""
