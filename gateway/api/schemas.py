"""The API's request and response bodies (pydantic: the edge of the gateway), its one error
shape, and the error answers the OpenAPI schema documents."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field

from gateway.fleet.state import DeviceState


class ErrorBody(BaseModel):
    error: str = Field(description="unauthorized | forbidden | not_found | invalid_request | "
                                   "unavailable")
    detail: str


class ApiError(Exception):
    """Raised by a route or dependency; answered as an ErrorBody with its status."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail

JsonNumber = float | str | None  # NaN/Inf are served as strings: JSON has no such numbers


class DeviceSummary(BaseModel):
    device_id: str
    state: DeviceState
    state_since_ms: int
    online: bool
    platform: str | None
    firmware: str | None
    boot: int | None
    labels: dict[str, str]
    interval_ms: int | None
    last_seen_ms: int
    last_seq: int | None
    completeness_pct: float | None
    series: int
    over_series_budget: bool


class DeviceList(BaseModel):
    total: int
    counts: dict[str, int]
    devices: list[DeviceSummary]
    next_cursor: str | None


class LatestValue(BaseModel):
    value: JsonNumber
    timestamp_ms: int


class BootCompleteness(BaseModel):
    boot: int
    received: int
    duplicates: int
    missing: int
    completeness_pct: float | None
    first_seq: int | None
    last_seq: int | None
    gaps: list[tuple[int, int]]


class Completeness(BaseModel):
    received: int
    duplicates: int
    missing: int
    quarantined: int  # frames refused as invalid: not received, their seqs still free
    completeness_pct: float | None
    boots: list[BootCompleteness]


class SeriesBudgetView(BaseModel):
    limit: int
    series: int
    refused_samples: int


class Event(BaseModel):
    id: int | None
    device_id: str
    ts_ms: int
    kind: Literal["state", "reboot"]
    boot: int | None = None
    state: str | None = None
    previous: str | None = None
    reason: str | None = None
    previous_boot: int | None = None


class DeviceDetail(DeviceSummary):
    first_seen_ms: int
    clock_ahead_ms: int
    latest: dict[str, LatestValue]
    completeness: Completeness
    series_budget: SeriesBudgetView
    events: list[Event]


class EventPage(BaseModel):
    events: list[Event]
    next_before_id: int | None


class WorstDevice(BaseModel):
    device_id: str
    state: DeviceState
    completeness_pct: float | None
    missing: int


class OverBudget(BaseModel):
    device_id: str
    series: int
    refused_samples: int


class FleetSlice(BaseModel):
    """The devices this gateway owns: with several gateways on one broker (sharding by
    topic_prefix) or two on the same devices (an HA pair), which one is this."""

    gateway_id: str
    topic_prefix: str
    subscriptions: list[str] = Field(description="the MQTT topic filters it subscribes to")
    broker: str = Field(description="mqtt://host:port or mqtts://host:port (no credentials)")
    mqtt_client_id: str = Field(description="names its persistent session at the broker")


class FleetSummary(BaseModel):
    slice: FleetSlice
    total: int
    by_state: dict[str, int]
    by_platform: dict[str, int]
    by_firmware: dict[str, int]
    completeness: dict[str, int]
    worst: list[WorstDevice]
    over_series_budget: list[OverBudget]


def _not_a_bool(value: Any) -> Any:
    """JSON Schema's integer: 7 and 7.0 are counts, true is not (pydantic would take it as 1)."""
    if isinstance(value, bool):
        raise ValueError("a count is required, not a boolean")
    return value


class ReplayRequest(BaseModel):
    endpoint: str | None = None
    limit: Annotated[int, BeforeValidator(_not_a_bool)] = Field(1000, ge=1, le=10_000)


class ReplayResult(BaseModel):
    replayed: int
    refused: int
    remaining: int


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or unknown token"},
    403: {"model": ErrorBody, "description": "the token's scope does not allow this"},
    422: {"model": ErrorBody, "description": "invalid parameters"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "unknown device"}}

