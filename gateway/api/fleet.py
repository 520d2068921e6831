"""Routes of the "fleet" tag: the device list and detail, events, forgetting a device, the
fleet summary and the server-sent event stream (docs/api.md)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials

from gateway.api.auth import ADMIN, READ, Port, authorize, bearer
from gateway.api.fleet_view import (
    FleetView,
    Sort,
    completeness_bucket,
    decode_cursor,
    encode_cursor,
    has_label,
    label_filter,
)
from gateway.api.port import GatewayPort
from gateway.api.schemas import (
    ERRORS,
    NOT_FOUND,
    ApiError,
    BootCompleteness,
    Completeness,
    DeviceDetail,
    DeviceList,
    Event,
    EventPage,
    FleetSlice,
    FleetSummary,
    LatestValue,
    OverBudget,
    SeriesBudgetView,
    WorstDevice,
)
from gateway.fleet import completeness
from gateway.fleet.state import DeviceRecord, DeviceState

STREAM_KEEPALIVE_S = 15.0
RECENT_EVENTS = 20
WORST_DEVICES = 10
STATES_PATTERN = r"^(online|late|offline)(,(online|late|offline))*$"

router = APIRouter(tags=["fleet"])


def _json_value(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


def _wanted_states(state: list[str]) -> set[DeviceState]:
    wanted: set[DeviceState] = set()
    for part in (p.strip() for s in state for p in s.split(",")):
        if part not in DeviceState.__members__.values():
            raise ApiError(422, "invalid_request", f"state {part!r}: use online, late or offline")
        wanted.add(DeviceState(part))
    return wanted


@router.get("/api/v1/devices", response_model=DeviceList, dependencies=READ, responses=ERRORS)
async def devices(
    port: Port,
    state: Annotated[list[Annotated[str, Query(pattern=STATES_PATTERN)]] | None, Query(
        description="online, late or offline; repeat or comma-separate")] = None,
    platform: str | None = None,
    firmware: str | None = None,
    label: Annotated[list[Annotated[str, Query(pattern=r"^[^=]+=")]] | None, Query(
        description="name=value, all must match")] = None,
    seen_after_ms: int | None = None,
    seen_before_ms: int | None = None,
    q: Annotated[str | None, Query(description="substring of the id, any case")] = None,
    sort: Sort = "device_id",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> DeviceList:
    checks: list[Callable[[DeviceRecord], bool]] = []
    wanted: set[DeviceState] = set()
    if state:
        wanted = _wanted_states(state)
        checks.append(lambda r: r.state in wanted)
    if platform is not None:
        checks.append(lambda r: r.platform == platform)
    if firmware is not None:
        checks.append(lambda r: r.firmware == firmware)
    for name, value in label_filter(label or []):
        checks.append(has_label(name, value))
    if seen_after_ms is not None:
        checks.append(lambda r: r.last_seen_ms >= seen_after_ms)
    if seen_before_ms is not None:
        checks.append(lambda r: r.last_seen_ms < seen_before_ms)
    if q:
        needle = q.lower()
        checks.append(lambda r: needle in r.device_id.lower())

    def match(record: DeviceRecord) -> bool:
        return all(check(record) for check in checks)

    view = FleetView(port)
    position = decode_cursor(cursor) if cursor else None
    try:
        records, next_key = view.page(match if checks else lambda r: True, sort, limit,
                                      position, wanted, q)
    except (IndexError, TypeError, ValueError) as exc:
        raise ApiError(422, "invalid_request", "cursor does not fit this sort") from exc
    fleet = port.fleet
    return DeviceList(total=len(fleet.devices), counts=fleet.counts(),
                      devices=[view.summary(r) for r in records],
                      next_cursor=encode_cursor(next_key) if next_key else None)


def _completeness(record: DeviceRecord, port: GatewayPort) -> Completeness:
    full = completeness.of_device(record, port.ledger)
    return Completeness(
        received=full.received, duplicates=full.duplicates, missing=full.missing,
        quarantined=record.quarantined, completeness_pct=full.completeness_pct,
        boots=[BootCompleteness(boot=b.boot, received=b.received, duplicates=b.duplicates,
                                missing=b.missing, completeness_pct=b.completeness_pct,
                                first_seq=b.first_seq, last_seq=b.last_seq, gaps=b.gaps)
               for b in full.boots])


@router.get("/api/v1/devices/{device_id}", response_model=DeviceDetail, dependencies=READ,
            responses={**ERRORS, **NOT_FOUND})
async def device(port: Port, device_id: str) -> DeviceDetail:
    view = FleetView(port)
    record = view.device_or_404(device_id)
    latest = {k: LatestValue(value=_json_value(v), timestamp_ms=t)
              for k, (v, t) in sorted(record.latest().items())}
    full = _completeness(record, port)
    events = await port.device_events(device_id, RECENT_EVENTS)
    budget = port.series_budget
    boot = record.boot
    return DeviceDetail(
        **view.summary(record).model_dump(), first_seen_ms=record.first_seen_ms,
        clock_ahead_ms=port.clock_ahead_ms(device_id, boot) if boot else 0,
        latest=latest, completeness=full,
        series_budget=SeriesBudgetView(limit=budget.limit, series=budget.series(device_id),
                                       refused_samples=budget.refused.get(device_id, 0)),
        events=[Event(**e) for e in events])


@router.get("/api/v1/devices/{device_id}/events", response_model=EventPage, dependencies=READ,
            responses={**ERRORS, **NOT_FOUND})
async def device_events(port: Port, device_id: str,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                        before_id: int | None = None) -> EventPage:
    FleetView(port).device_or_404(device_id)
    rows = await port.device_events(device_id, limit + 1, before_id)
    more = len(rows) > limit
    rows = rows[:limit]
    return EventPage(events=[Event(**e) for e in rows],
                     next_before_id=rows[-1]["id"] if more and rows else None)


@router.delete("/api/v1/devices/{device_id}", status_code=204, dependencies=ADMIN,
               responses={**ERRORS, **NOT_FOUND})
async def forget_device(port: Port, device_id: str) -> Response:
    FleetView(port).device_or_404(device_id)
    await port.forget_device(device_id)
    return Response(status_code=204)


@router.get("/api/v1/fleet/summary", response_model=FleetSummary, dependencies=READ,
            responses=ERRORS)
async def fleet_summary(port: Port) -> FleetSummary:
    fleet = port.fleet
    ranked = FleetView(port).incomplete_ranked()
    buckets = dict.fromkeys(("100", "99-100", "95-99", "90-95", "<90"), 0)
    for pct, _ in ranked:
        buckets[completeness_bucket(pct)] += 1
    # Devices without gaps that sent telemetry are complete (checked only when asked).
    buckets["100"] = fleet.reporting - len(ranked)
    worst = []
    for pct, device_id in ranked[:WORST_DEVICES]:
        record = fleet.devices[device_id]
        worst.append(WorstDevice(
            device_id=device_id, state=record.state, completeness_pct=pct,
            missing=completeness.totals(record, port.ledger)[1]))
    budget = port.series_budget
    over = sorted(budget.refused.items(), key=lambda kv: -kv[1])[:WORST_DEVICES]
    owned = port.fleet_slice
    return FleetSummary(
        slice=FleetSlice(gateway_id=owned.gateway_id, topic_prefix=owned.topic_prefix,
                         subscriptions=list(owned.subscriptions), broker=owned.broker,
                         mqtt_client_id=owned.mqtt_client_id),
        total=len(fleet.devices), by_state=fleet.counts(),
        by_platform=dict(fleet.platforms.most_common()),
        by_firmware=dict(fleet.firmwares.most_common()), completeness=buckets, worst=worst,
        over_series_budget=[OverBudget(device_id=d, series=budget.series(d),
                                       refused_samples=n) for d, n in over])


@router.get("/api/v1/events/stream", response_class=StreamingResponse,
            responses={**ERRORS, 200: {"content": {"text/event-stream": {}},
                                       "description": "server-sent events"}})
async def event_stream(
    port: Port,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    device_id: str | None = None,
    access_token: Annotated[str | None, Query(
        description="the token, for EventSource clients that cannot set headers")] = None,
) -> StreamingResponse:
    authorize(port.api_tokens, "read", credentials.credentials if credentials else access_token)
    subscription = port.subscribe_events(device_id)

    async def stream() -> AsyncIterator[str]:
        try:
            yield ": connected\n\n"
            while True:
                if subscription.overflowed.is_set():
                    yield "event: overflow\ndata: {}\n\n"
                    return
                try:
                    event = await asyncio.wait_for(subscription.queue.get(), STREAM_KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if "end" in event:
                    return
                yield f"event: device\nid: {event['id']}\ndata: {json.dumps(event)}\n\n"
        finally:
            port.unsubscribe_events(subscription)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
