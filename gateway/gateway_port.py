"""GatewayView: the operator API's port (gateway.api.port.GatewayPort) over the running Gateway.

The one place that knows which part of the gateway holds what the routes read (the fleet,
the pipeline's ledger, the buffer's position and size, each forwarder's status) and how the
API's two commands are carried out. When those internals move, only this file changes; the
routes and their in-process tests do not.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import generate_latest

from device_protocol import device_subscriptions
from gateway.api.port import (
    EndpointStatus,
    FleetSliceInfo,
    PipelineStatus,
    ReplayOutcome,
    SeriesBudgetReader,
)
from gateway.buffer import store
from gateway.fleet import queries
from gateway.fleet.completeness import Ledger
from gateway.fleet.events import Subscription
from gateway.fleet.series import device_exposition
from gateway.fleet.state import FleetState

if TYPE_CHECKING:
    from gateway.buffer.buffer import Buffer
    from gateway.buffer.db import Database
    from gateway.fleet.events import EventHub
    from gateway.fleet.state import DeviceRecord
    from gateway.forward.forwarder import Forwarder
    from gateway.ingest.mqtt import MqttIngest
    from gateway.metrics import GatewayMetrics
    from gateway.pipeline.births import BirthRegistry
    from gateway.pipeline.frame_compiler import FrameCompiler
    from gateway.pipeline.series_budget import SeriesBudget
    from gateway.pipeline.stage import Pipeline
    from gateway.settings import Settings


class RunningGateway(Protocol):
    """The parts of gateway.app.Gateway that GatewayView reads (a Protocol, so this module
    needs no import of gateway.app, which imports it)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def started_ms(self) -> int: ...
    @property
    def metrics(self) -> GatewayMetrics: ...
    @property
    def fleet(self) -> FleetState: ...
    @property
    def series_budget(self) -> SeriesBudget: ...
    @property
    def births(self) -> BirthRegistry: ...
    @property
    def events(self) -> EventHub: ...
    @property
    def ingest(self) -> MqttIngest: ...
    @property
    def pipeline(self) -> Pipeline: ...
    @property
    def compiler(self) -> FrameCompiler: ...
    @property
    def buffer(self) -> Buffer: ...
    @property
    def db(self) -> Database: ...
    @property
    def forwarders(self) -> Sequence[Forwarder]: ...
    @property
    def unsent_age_s(self) -> Mapping[str, float]: ...

    def missing_of(self, record: DeviceRecord) -> int: ...

    def send_rate(self, endpoint: str) -> float: ...


class GatewayView:
    """Implements GatewayPort by reading the Gateway's parts; holds no state of its own."""

    def __init__(self, gateway: RunningGateway) -> None:
        self._gateway = gateway

    # ---------------------------------------------------------------- configuration
    @property
    def api_tokens(self) -> Mapping[str, str]:
        return self._gateway.settings.api_tokens

    @property
    def endpoint_names(self) -> tuple[str, ...]:
        return tuple(f.endpoint for f in self._gateway.forwarders)

    @property
    def fleet_slice(self) -> FleetSliceInfo:
        settings = self._gateway.settings
        # The slice the ingest stage was built from (settings.mqtt_config): the same client id
        # default and parsed URL; the password it carries stays here.
        mqtt = settings.mqtt_config()
        host = f"[{mqtt.host}]" if ":" in mqtt.host else mqtt.host  # an IPv6 literal
        return FleetSliceInfo(
            gateway_id=mqtt.gateway_id, topic_prefix=mqtt.topic_prefix,
            subscriptions=tuple(device_subscriptions(mqtt.topic_prefix)),
            broker=f"{'mqtts' if mqtt.tls is not None else 'mqtt'}://{host}:{mqtt.port}",
            mqtt_client_id=mqtt.client_id)

    # ---------------------------------------------------------------- fleet
    @property
    def fleet(self) -> FleetState:
        return self._gateway.fleet

    @property
    def ledger(self) -> Ledger:
        return self._gateway.pipeline.ledger

    @property
    def series_budget(self) -> SeriesBudgetReader:
        return self._gateway.series_budget

    def clock_ahead_ms(self, device_id: str, boot: int) -> int:
        return self._gateway.births.clock_ahead_ms(device_id, boot)

    def subscribe_events(self, device_id: str | None) -> Subscription:
        return self._gateway.events.subscribe(device_id)

    def unsubscribe_events(self, subscription: Subscription) -> None:
        self._gateway.events.unsubscribe(subscription)

    def render_metrics(self) -> bytes:
        gateway = self._gateway
        return (generate_latest(gateway.metrics.registry)
                + device_exposition(gateway.fleet, gateway.missing_of))

    # ---------------------------------------------------------------- readiness and pipeline
    @property
    def mqtt_connected(self) -> bool:
        return self._gateway.ingest.connected

    @property
    def last_commit_ok(self) -> bool:
        return self._gateway.pipeline.last_commit_ok

    async def probe_write(self) -> None:
        await self._gateway.db.write(lambda conn: None)

    def pipeline_status(self) -> PipelineStatus:
        gateway = self._gateway
        buffer, settings = gateway.buffer, gateway.settings
        return PipelineStatus(
            mqtt_connected=gateway.ingest.connected, started_ms=gateway.started_ms,
            committed_upto=buffer.committed_upto, buffer_frames=buffer.frames,
            buffer_bytes=buffer.bytes,
            held_frames=sum(len(v) for v in gateway.pipeline.held.values()),
            buffer_max_bytes=settings.buffer_max_bytes,
            buffer_full_policy=settings.buffer_full_policy,
            dedup_keys=len(gateway.pipeline.ledger),
            endpoints=tuple(self._endpoint_status(f) for f in gateway.forwarders),
            last_recovery=gateway.db.last_recovery)

    def _endpoint_status(self, forwarder: Forwarder) -> EndpointStatus:
        status = forwarder.status
        return EndpointStatus(
            endpoint=forwarder.endpoint, cursor=forwarder.cursor,
            cursor_offset=status.cursor_offset, paused=status.paused,
            retrying=forwarder.retrying, max_samples_per_request=status.max_samples_per_request,
            oldest_unsent_age_s=self._gateway.unsent_age_s.get(forwarder.endpoint, 0.0),
            send_rate_samples_per_s=self._gateway.send_rate(forwarder.endpoint),
            sent_samples=status.sent_samples, retries=status.retries,
            dead_letters=status.dead_letters, last_error=status.last_error,
            last_success_ms=status.last_success_ms, live_lane=status.live_lane)

    # ---------------------------------------------------------------- read-only queries
    async def device_events(self, device_id: str, limit: int,
                            before_id: int | None = None) -> list[dict[str, Any]]:
        return await self._gateway.db.read(functools.partial(
            queries.device_events, device_id=device_id, limit=limit, before_id=before_id))

    async def quarantine_rows(self, limit: int) -> list[dict[str, object]]:
        return await self._gateway.db.read(functools.partial(queries.quarantine_rows,
                                                             limit=limit))

    async def dead_letter_rows(self, limit: int) -> list[dict[str, object]]:
        return await self._gateway.db.read(functools.partial(queries.dead_letter_rows,
                                                             limit=limit))

    # ---------------------------------------------------------------- commands
    async def forget_device(self, device_id: str) -> None:
        gateway = self._gateway
        gateway.fleet.forget(device_id)
        gateway.series_budget.forget(device_id)
        gateway.compiler.forget_device(device_id)
        await gateway.db.write(lambda conn: store.forget_device(conn, device_id))

    async def replay_dead_letters(self, endpoint: str | None, limit: int) -> ReplayOutcome:
        db = self._gateway.db
        forwarders = {f.endpoint: f for f in self._gateway.forwarders}
        letters = await db.read(
            lambda conn: store.dead_letters_to_replay(conn, endpoint, limit))
        delivered: list[int] = []
        refused: list[tuple[int, str, int]] = []
        by_endpoint: dict[str, list[tuple[int, bytes]]] = {}
        for letter_id, letter_endpoint, entry in letters:
            by_endpoint.setdefault(letter_endpoint, []).append((letter_id, entry))
        try:
            for letter_endpoint, items in by_endpoint.items():
                forwarder = forwarders.get(letter_endpoint)
                if forwarder is None:
                    continue  # an endpoint no longer configured: its letters stay
                took, again = await forwarder.replay(items)
                delivered += took
                refused += again
        finally:  # what an endpoint took is settled even when the next one is unreachable
            remaining = await db.write(
                lambda conn: store.settle_dead_letters(conn, delivered, refused))
        return ReplayOutcome(replayed=len(delivered), refused=len(refused), remaining=remaining)
