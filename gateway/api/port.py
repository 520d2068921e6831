"""The one interface between the routes and the running gateway.

The routes read the fleet and a few facts about the pipeline, run three read-only queries, and
issue two commands (forget a device, replay dead letters); `GatewayPort` is exactly that, so
the API has no import of gateway.app and its tests serve it in-process against a fake port.
The real implementation is gateway.gateway_port.GatewayView, the only place that knows which
part of the gateway holds what.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.fleet.completeness import Ledger
from gateway.fleet.events import Subscription
from gateway.fleet.state import FleetState


class SeriesBudgetReader(Protocol):
    """What the routes read of the per-device series budget (gateway.pipeline.series_budget)."""

    @property
    def limit(self) -> int: ...

    @property
    def refused(self) -> Mapping[str, int]:
        """Samples refused at ingest, per device."""
        ...

    def series(self, device_id: str) -> int: ...

    def over(self, device_id: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """One remote-write endpoint, as GET /api/v1/pipeline shows it."""

    endpoint: str
    cursor: int
    cursor_offset: int  # entries of frame cursor + 1 already sent (a frame split across requests)
    paused: str | None  # why it is paused (a configuration error), else None
    retrying: bool
    max_samples_per_request: int  # remote_write_max_samples, or less after a 413
    oldest_unsent_age_s: float
    send_rate_samples_per_s: float
    sent_samples: int
    retries: int
    dead_letters: int
    last_error: str | None
    last_success_ms: int | None
    live_lane: tuple[int, int] | None  # (live_from, live_upto) while one is open


@dataclass(frozen=True, slots=True)
class PipelineStatus:
    """The data path at one moment: ingest, the buffer, dedup, each endpoint."""

    mqtt_connected: bool
    started_ms: int
    committed_upto: int
    buffer_frames: int
    buffer_bytes: int
    held_frames: int
    buffer_max_bytes: int
    buffer_full_policy: str
    dedup_keys: int
    endpoints: tuple[EndpointStatus, ...]
    last_recovery: dict[str, Any] | None  # the newest start-up recovery, None if there was none


@dataclass(frozen=True, slots=True)
class FleetSliceInfo:
    """Which devices this gateway owns when several share a broker or a receiver (sharding by
    topic_prefix, an HA pair): its identity, its MQTT topic filters, where and as whom."""

    gateway_id: str
    topic_prefix: str
    subscriptions: tuple[str, ...]  # the MQTT topic filters it subscribes to
    broker: str  # scheme://host:port of mqtt_url (a URL with userinfo is refused at start)
    mqtt_client_id: str  # names its persistent session at the broker


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    replayed: int
    refused: int
    remaining: int


class GatewayPort(Protocol):
    """What the operator API reads of the gateway and the commands it issues."""

    # ---------------------------------------------------------------- configuration
    @property
    def api_tokens(self) -> Mapping[str, str]:
        """token -> scope ("read" or "admin"); empty: the API is open."""
        ...

    @property
    def endpoint_names(self) -> tuple[str, ...]:
        """The configured remote-write endpoints."""
        ...

    @property
    def fleet_slice(self) -> FleetSliceInfo:
        """The devices this gateway owns (topic prefix, subscriptions, broker, session)."""
        ...

    # ---------------------------------------------------------------- fleet
    @property
    def fleet(self) -> FleetState: ...

    @property
    def ledger(self) -> Ledger:
        """The dedup ledger, read for completeness."""
        ...

    @property
    def series_budget(self) -> SeriesBudgetReader: ...

    def clock_ahead_ms(self, device_id: str, boot: int) -> int:
        """How far the boot's clock read ahead of the gateway's at its birth."""
        ...

    def subscribe_events(self, device_id: str | None) -> Subscription: ...

    def unsubscribe_events(self, subscription: Subscription) -> None: ...

    def render_metrics(self) -> bytes:
        """The Prometheus exposition of the gateway and its devices; run in a worker thread."""
        ...

    # ---------------------------------------------------------------- readiness and pipeline
    @property
    def mqtt_connected(self) -> bool: ...

    @property
    def last_commit_ok(self) -> bool:
        """The newest group commit succeeded (False while one is being retried)."""
        ...

    async def probe_write(self) -> None:
        """An empty write transaction: raises if the database cannot be written."""
        ...

    def pipeline_status(self) -> PipelineStatus: ...

    # ---------------------------------------------------------------- read-only queries
    async def device_events(self, device_id: str, limit: int,
                            before_id: int | None = None) -> list[dict[str, Any]]:
        """The device's stored events, newest first, with ids below before_id."""
        ...

    async def quarantine_rows(self, limit: int) -> list[dict[str, object]]: ...

    async def dead_letter_rows(self, limit: int) -> list[dict[str, object]]: ...

    # ---------------------------------------------------------------- commands
    async def forget_device(self, device_id: str) -> None:
        """Forget a known device: its fleet row, series budget, compiled series and events."""
        ...

    async def replay_dead_letters(self, endpoint: str | None, limit: int) -> ReplayOutcome:
        """Send the oldest dead letters (of one configured endpoint or all) again; raises
        ForwardUnavailable if an endpoint cannot be reached (what was settled stays so)."""
        ...
