"""The gateway's own metrics (prometheus-client), one registry per gateway instance.

Declared by family, in data-path order (ingest, group commit, buffer, forward, the durable
store totals, MQTT and the fleet); the order of declaration is the order of `/metrics`.
Metric names, help texts and labels are what operators' dashboards and docs/operations.md
name: change them only with both.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._ingest_metrics(r)
        self._commit_metrics(r)
        self._buffer_metrics(r)
        self._forward_metrics(r)
        self._store_metrics(r)
        self._fleet_metrics(r)

    def _ingest_metrics(self, r: CollectorRegistry) -> None:
        """What arrived over MQTT and what the pipeline made of it."""
        self.frames_received = Counter(
            "fleetgate_frames_received", "MQTT messages received, by frame kind", ["kind"],
            registry=r)
        self.frames_stored = Counter(
            "fleetgate_frames_stored", "Frames committed to the buffer", registry=r)
        self.frames_duplicate = Counter(
            "fleetgate_frames_duplicate", "Telemetry frames dropped as already seen", registry=r)
        self.frames_invalid = Counter(
            "fleetgate_frames_invalid", "Frames quarantined, by reason", ["reason"], registry=r)
        self.labels_dropped = Counter(
            "fleetgate_labels_dropped",
            "Labels left out of received samples and births, by reason (empty_value: "
            "{a=\"\"} is no label a; the sample is kept)", ["reason"], registry=r)
        self.frames_held = Gauge(
            "fleetgate_frames_held", "Telemetry waiting for its boot's birth", registry=r)
        self.frames_dropped = Counter(
            "fleetgate_frames_dropped", "Frames dropped by the gateway, by reason", ["reason"],
            registry=r)
        self.rebirths_requested = Counter(
            "fleetgate_rebirths_requested", "Rebirth commands sent to devices", registry=r)

    def _commit_metrics(self, r: CollectorRegistry) -> None:
        """The SQLite group commit, and background ticks that failed on SQLite."""
        self.commit_seconds = Histogram(
            "fleetgate_commit_duration_seconds", "SQLite group commit time", registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.commit_frames = Histogram(
            "fleetgate_commit_batch_messages", "Messages per group commit", registry=r,
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000))
        self.commit_errors = Counter(
            "fleetgate_commit_errors", "Failed group commits (retried)", registry=r)
        self.background_errors = Counter(
            "fleetgate_background_errors",
            "Ticks of a background task that failed on SQLite (a full disk...), retried at "
            "its next tick", ["task"], registry=r)

    def _buffer_metrics(self, r: CollectorRegistry) -> None:
        """What the buffer holds, and ingest waiting on it when full."""
        self.buffer_frames = Gauge(
            "fleetgate_buffer_frames", "Frames in the buffer", registry=r)
        self.buffer_bytes = Gauge(
            "fleetgate_buffer_bytes", "Payload bytes in the buffer (frames + held)", registry=r)
        self.buffer_full_waits = Counter(
            "fleetgate_buffer_full_waits", "Times ingest waited on a full buffer", registry=r)

    def _forward_metrics(self, r: CollectorRegistry) -> None:
        """Remote-write per endpoint: progress, results, retries, pauses, drops."""
        self.oldest_unsent_age = Gauge(
            "fleetgate_oldest_unsent_age_seconds", "Age of the oldest frame not yet sent",
            ["endpoint"], registry=r)
        self.forward_samples = Counter(
            "fleetgate_forward_samples", "Samples accepted by the endpoint", ["endpoint"],
            registry=r)
        self.forward_requests = Counter(
            "fleetgate_forward_requests", "Remote-write requests by result", ["endpoint", "result"],
            registry=r)
        self.forward_retries = Counter(
            "fleetgate_forward_retries", "Remote-write attempts retried", ["endpoint"], registry=r)
        self.forward_dead_letters = Counter(
            "fleetgate_forward_dead_letters", "Samples refused by the endpoint (dead-lettered)",
            ["endpoint"], registry=r)
        self.forward_duration = Histogram(
            "fleetgate_forward_request_duration_seconds", "Remote-write request time",
            ["endpoint"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.forward_paused = Gauge(
            "fleetgate_forward_paused",
            "1 while the endpoint is paused on a configuration error (401/403/404/..., a refusal "
            "of even an empty request, an untrusted TLS certificate)",
            ["endpoint"], registry=r)
        self.forward_request_samples_max = Gauge(
            "fleetgate_forward_request_samples_max",
            "Samples per request now (remote_write_max_samples, lowered after a 413)",
            ["endpoint"], registry=r)
        self.forward_frames_dropped = Counter(
            "fleetgate_forward_frames_dropped",
            "Frames the buffer_full policy deleted before this endpoint had them", ["endpoint"],
            registry=r)

    def _store_metrics(self, r: CollectorRegistry) -> None:
        """The database's durable totals."""
        # Durable totals: started from the database's counters table at every start.
        self.store_recoveries = Counter(
            "fleetgate_store_recoveries", "Damaged databases set aside and salvaged at start-up",
            registry=r)
        self.store_unreadable_frames = Counter(
            "fleetgate_store_unreadable_frames",
            "Acknowledged frames lost in the unreadable parts of a damaged database", registry=r)

    def _fleet_metrics(self, r: CollectorRegistry) -> None:
        """The broker connection and the devices' lifecycle."""
        self.mqtt_connected = Gauge(
            "fleetgate_mqtt_connected", "1 while connected to the broker", registry=r)
        self.devices = Gauge("fleetgate_devices", "Devices known, by state", ["state"], registry=r)
        self.device_events = Counter(
            "fleetgate_device_events", "Device events: state entered, or reboot", ["event"],
            registry=r)
        self.stale_markers = Counter(
            "fleetgate_stale_markers", "Stale markers queued for devices gone offline",
            registry=r)
