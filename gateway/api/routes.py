"""Operator API (FastAPI), served by uvicorn on the gateway's own event loop.

Routes only read state and format it; nothing here parses frames or writes the buffer. The
contract, with examples, is docs/api.md; the schema is served at /openapi.json.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, BeforeValidator, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import __version__
from gateway.buffer import store
from gateway.errors import ForwardUnavailable
from gateway.fleet import completeness, queries
from gateway.fleet.series import device_exposition
from gateway.fleet.state import DeviceRecord, DeviceState

if TYPE_CHECKING:
    from gateway.app import Gateway

READY_WRITE_TIMEOUT_S = 2.0
STATIC_DIR = Path(__file__).parent / "static"
STREAM_KEEPALIVE_S = 15.0
RECENT_EVENTS = 20
# Module-level: route signatures are resolved against the module's globals (annotations are
# strings here), so a local would make FastAPI take the parameter for a query string.
bearer = HTTPBearer(auto_error=False, description="token:scope pairs from api_tokens")
WORST_DEVICES = 10
Scope = Literal["read", "admin"]
STATES_PATTERN = r"^(online|late|offline)(,(online|late|offline))*$"
Sort = Literal["device_id", "-device_id", "last_seen", "-last_seen", "completeness"]


# ---------------------------------------------------------------------------------- models
class ErrorBody(BaseModel):
    error: str = Field(description="unauthorized | forbidden | not_found | invalid_request | "
                                   "unavailable")
    detail: str


class ApiError(Exception):
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


class FleetSummary(BaseModel):
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


# ---------------------------------------------------------------------------------- helpers
def _json_value(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


def _encode_cursor(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> list[Any]:
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise ApiError(422, "invalid_request", "cursor is not one this API gave out") from exc
    if not isinstance(key, list) or not key:
        raise ApiError(422, "invalid_request", "cursor is not one this API gave out")
    return key


def _label_filter(labels: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for label in labels:
        name, sep, value = label.partition("=")
        if not sep or not name:
            raise ApiError(422, "invalid_request", f"label filter {label!r} must be name=value")
        pairs.append((name, value))
    return pairs


class FleetView:
    """Read-side queries over the fleet, for the routes below."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    @property
    def fleet(self) -> Any:
        return self.gateway.fleet

    def completeness_pct(self, record: DeviceRecord) -> float | None:
        if record.device_id in self.fleet.incomplete:
            received, missing = completeness.totals(record, self.gateway.pipeline.ledger)
            if not missing:
                self.fleet.incomplete.discard(record.device_id)  # a replay filled the gaps
            return completeness.percent(received, missing)
        return 100.0 if record.frames else None

    def summary(self, record: DeviceRecord) -> DeviceSummary:
        budget = self.gateway.series_budget
        return DeviceSummary(
            device_id=record.device_id, state=record.state, state_since_ms=record.state_since_ms,
            online=record.online, platform=record.platform, firmware=record.firmware,
            boot=record.boot, labels=record.labels, interval_ms=record.interval_ms,
            last_seen_ms=record.last_seen_ms, last_seq=record.last_seq,
            completeness_pct=self.completeness_pct(record),
            series=budget.series(record.device_id),
            over_series_budget=budget.over(record.device_id))

    def incomplete_ranked(self) -> list[tuple[float, str]]:
        """(completeness %, id) of devices with gaps, worst first."""
        ranked = []
        for device_id in list(self.fleet.incomplete):
            record = self.fleet.devices.get(device_id)
            if record is None:
                self.fleet.incomplete.discard(device_id)
                continue
            pct = self.completeness_pct(record)
            if pct is not None and pct < 100.0:
                ranked.append((pct, device_id))
        ranked.sort()
        return ranked

    def page(self, match: Callable[[DeviceRecord], bool], sort: Sort, limit: int,
             cursor: list[Any] | None, states: set[DeviceState] | None = None,
             q: str | None = None) -> tuple[list[DeviceRecord], list[Any] | None]:
        devices = self.fleet.devices
        if sort in ("device_id", "-device_id"):
            ids = None
            if q:  # the id search first: it narrows the fleet the most cheaply
                ids = self.fleet.ids_containing(q)
            elif states:
                wanted = sum(len(self.fleet.by_state[s]) for s in states)
                if wanted * 5 < len(devices):  # a rare state: sort its few ids, don't scan
                    ids = sorted(set().union(*(self.fleet.by_state[s] for s in states)))
            return self._page_by_id(match, sort == "-device_id", limit, cursor, ids)
        if sort == "completeness":
            return self._page_by_completeness(match, limit, cursor)
        return self._page_by_last_seen(match, sort == "-last_seen", limit, cursor)

    def _page_by_last_seen(self, match: Callable[[DeviceRecord], bool], newest_first: bool,
                           limit: int, cursor: list[Any] | None
                           ) -> tuple[list[DeviceRecord], list[Any] | None]:
        """In FleetState's recency order: no sort of the fleet. Cursor: [last_seen_ms, id];
        a page resumes after that device among those seen in the same millisecond."""
        devices = self.fleet.devices
        order = self.fleet.by_last_seen(newest_first)
        out: list[DeviceRecord] = []
        if cursor is not None:
            seen_ms, last_id = int(cursor[0]), str(cursor[1])
            passed = False
            for device_id in order:
                record = devices.get(device_id)
                if record is None:
                    continue
                ahead = (record.last_seen_ms > seen_ms if newest_first
                         else record.last_seen_ms < seen_ms)
                if ahead:
                    continue
                if record.last_seen_ms == seen_ms and not passed:
                    passed = device_id == last_id
                    continue
                if match(record):
                    out.append(record)
                    break
        for device_id in order:
            if len(out) > limit:
                break
            record = devices.get(device_id)
            if record is not None and match(record):
                out.append(record)
        if len(out) > limit:
            out = out[:limit]
            return out, [out[-1].last_seen_ms, out[-1].device_id]
        return out, None

    def _page_by_id(self, match: Callable[[DeviceRecord], bool], descending: bool, limit: int,
                    cursor: list[Any] | None, ids: list[str] | None = None
                    ) -> tuple[list[DeviceRecord], list[Any] | None]:
        if ids is None:
            ids = self.fleet.sorted_ids()
        devices = self.fleet.devices
        if descending:
            end = bisect.bisect_left(ids, str(cursor[0])) if cursor else len(ids)
            order: Iterator[str] = (ids[i] for i in range(end - 1, -1, -1))
        else:
            start = bisect.bisect_right(ids, str(cursor[0])) if cursor else 0
            order = (ids[i] for i in range(start, len(ids)))
        out: list[DeviceRecord] = []
        for device_id in order:
            record = devices.get(device_id)
            if record is None or not match(record):
                continue
            if len(out) == limit:
                return out, [out[-1].device_id]
            out.append(record)
        return out, None

    def _page_by_completeness(self, match: Callable[[DeviceRecord], bool], limit: int,
                              cursor: list[Any] | None
                              ) -> tuple[list[DeviceRecord], list[Any] | None]:
        """Devices with gaps, worst first; then the rest by id. Cursor: [phase, pct, id]."""
        devices = self.fleet.devices
        ranked = self.incomplete_ranked()
        gappy = {device_id for _, device_id in ranked}
        ids = self.fleet.sorted_ids()

        def ordered() -> Iterator[tuple[list[Any], str]]:
            for pct, device_id in ranked:
                yield [0, pct, device_id], device_id
            for device_id in ids:
                if device_id not in gappy:
                    yield [1, 100.0, device_id], device_id

        after = (int(cursor[0]), float(cursor[1]), str(cursor[2])) if cursor else None
        out: list[DeviceRecord] = []
        last_key: list[Any] | None = None
        for key, device_id in ordered():
            if after is not None and tuple(key) <= after:
                continue
            record = devices.get(device_id)
            if record is None or not match(record):
                continue
            if len(out) == limit:
                return out, last_key
            out.append(record)
            last_key = key
        return out, None

    def device_or_404(self, device_id: str) -> DeviceRecord:
        record = self.fleet.devices.get(device_id)
        if record is None:
            raise ApiError(404, "not_found", f"unknown device {device_id!r}")
        return record


def _has_label(name: str, value: str) -> Callable[[DeviceRecord], bool]:
    return lambda record: record.labels.get(name) == value


def _completeness_bucket(pct: float) -> str:
    if pct >= 100.0:
        return "100"
    if pct >= 99.0:
        return "99-100"
    if pct >= 95.0:
        return "95-99"
    if pct >= 90.0:
        return "90-95"
    return "<90"


# ---------------------------------------------------------------------------------- app
def create_api(gateway: Gateway) -> FastAPI:
    api = FastAPI(title="fleetgate", version=__version__,
                  description="Fleet telemetry gateway: devices, pipeline health, metrics. "
                              "See docs/api.md.")
    view = FleetView(gateway)

    @api.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.error, "detail": exc.detail}, status_code=exc.status,
                            headers=headers)

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors())
        return JSONResponse({"error": "invalid_request", "detail": problems}, status_code=422)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's "error parsing the body": like any bad request
            return JSONResponse({"error": "invalid_request", "detail": str(exc.detail)},
                                status_code=422)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return JSONResponse({"error": code, "detail": str(exc.detail)},
                            status_code=exc.status_code)

    def authorize(scope: Scope, token: str | None) -> None:
        tokens = gateway.settings.api_tokens
        if not tokens:
            return
        if token is None:
            raise ApiError(401, "unauthorized", "a bearer token is required "
                                                "(Authorization: Bearer <token>)")
        granted = tokens.get(token)
        if granted is None:
            raise ApiError(401, "unauthorized", "unknown token")
        if scope == "admin" and granted != "admin":
            raise ApiError(403, "forbidden", "this route needs a token with the admin scope")

    def needs(scope: Scope) -> Callable[..., None]:
        def check(credentials: Annotated[HTTPAuthorizationCredentials | None,
                                         Depends(bearer)]) -> None:
            authorize(scope, credentials.credentials if credentials else None)
        return check

    read = [Depends(needs("read"))]
    admin = [Depends(needs("admin"))]

    # ------------------------------------------------------------------ open routes
    @api.get("/", include_in_schema=False, response_model=None)
    async def page() -> FileResponse | Response:
        index = STATIC_DIR / "index.html"
        if not index.is_file():
            return Response("fleetgate: the fleet page is not installed", status_code=404)
        return FileResponse(index)

    if STATIC_DIR.is_dir():
        api.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @api.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", tags=["health"], responses={503: {"description": "not ready"}})
    async def readyz() -> JSONResponse:
        problems = []
        if not gateway.ingest.connected:
            problems.append("not connected to the MQTT broker")
        try:
            await asyncio.wait_for(gateway.db.write(lambda conn: None), READY_WRITE_TIMEOUT_S)
        except Exception as exc:
            problems.append(f"database not writable: {exc}")
        if not gateway.pipeline.last_commit_ok:
            problems.append("last group commit failed (retrying)")
        status = 503 if problems else 200
        return JSONResponse({"ready": not problems, "problems": problems}, status_code=status)

    @api.get("/metrics", tags=["health"], response_class=Response)
    async def metrics() -> Response:
        # In a thread: with per-device families, 100,000 devices make ~30 MB of text, a
        # quarter second that would otherwise stall ingest (the renderers copy what they read).
        def render() -> bytes:
            return (generate_latest(gateway.metrics.registry)
                    + device_exposition(gateway.fleet, gateway.missing_of))

        return Response(await asyncio.to_thread(render), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------ fleet
    @api.get("/api/v1/devices", response_model=DeviceList, tags=["fleet"], dependencies=read,
             responses=ERRORS)
    async def devices(
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
            for part in (p.strip() for s in state for p in s.split(",")):
                if part not in DeviceState.__members__.values():
                    raise ApiError(422, "invalid_request",
                                   f"state {part!r}: use online, late or offline")
                wanted.add(DeviceState(part))
            checks.append(lambda r: r.state in wanted)
        if platform is not None:
            checks.append(lambda r: r.platform == platform)
        if firmware is not None:
            checks.append(lambda r: r.firmware == firmware)
        for name, value in _label_filter(label or []):
            checks.append(_has_label(name, value))
        if seen_after_ms is not None:
            checks.append(lambda r: r.last_seen_ms >= seen_after_ms)
        if seen_before_ms is not None:
            checks.append(lambda r: r.last_seen_ms < seen_before_ms)
        if q:
            needle = q.lower()
            checks.append(lambda r: needle in r.device_id.lower())

        def match(record: DeviceRecord) -> bool:
            return all(check(record) for check in checks)

        position = _decode_cursor(cursor) if cursor else None
        try:
            records, next_key = view.page(match if checks else lambda r: True, sort, limit,
                                          position, wanted, q)
        except (IndexError, TypeError, ValueError) as exc:
            raise ApiError(422, "invalid_request", "cursor does not fit this sort") from exc
        fleet = gateway.fleet
        return DeviceList(total=len(fleet.devices), counts=fleet.counts(),
                          devices=[view.summary(r) for r in records],
                          next_cursor=_encode_cursor(next_key) if next_key else None)

    @api.get("/api/v1/devices/{device_id}", response_model=DeviceDetail, tags=["fleet"],
             dependencies=read, responses={**ERRORS, **NOT_FOUND})
    async def device(device_id: str) -> DeviceDetail:
        record = view.device_or_404(device_id)
        latest = {k: LatestValue(value=_json_value(v), timestamp_ms=t)
                  for k, (v, t) in sorted(record.latest().items())}
        ledger = gateway.pipeline.ledger
        full = completeness.of_device(record, ledger)
        events = await gateway.db.read(
            lambda conn: queries.device_events(conn, device_id, RECENT_EVENTS))
        budget = gateway.series_budget
        boot = record.boot
        return DeviceDetail(
            **view.summary(record).model_dump(), first_seen_ms=record.first_seen_ms,
            clock_ahead_ms=gateway.births.clock_ahead_ms(device_id, boot) if boot else 0,
            latest=latest,
            completeness=Completeness(
                received=full.received, duplicates=full.duplicates, missing=full.missing,
                quarantined=record.quarantined, completeness_pct=full.completeness_pct,
                boots=[BootCompleteness(boot=b.boot, received=b.received,
                                        duplicates=b.duplicates, missing=b.missing,
                                        completeness_pct=b.completeness_pct,
                                        first_seq=b.first_seq, last_seq=b.last_seq,
                                        gaps=b.gaps) for b in full.boots]),
            series_budget=SeriesBudgetView(limit=budget.limit, series=budget.series(device_id),
                                           refused_samples=budget.refused.get(device_id, 0)),
            events=[Event(**e) for e in events])

    @api.get("/api/v1/devices/{device_id}/events", response_model=EventPage, tags=["fleet"],
             dependencies=read, responses={**ERRORS, **NOT_FOUND})
    async def device_events(device_id: str, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                            before_id: int | None = None) -> EventPage:
        view.device_or_404(device_id)
        rows = await gateway.db.read(
            lambda conn: queries.device_events(conn, device_id, limit + 1, before_id))
        more = len(rows) > limit
        rows = rows[:limit]
        return EventPage(events=[Event(**e) for e in rows],
                         next_before_id=rows[-1]["id"] if more and rows else None)

    @api.delete("/api/v1/devices/{device_id}", status_code=204, tags=["fleet"],
                dependencies=admin, responses={**ERRORS, **NOT_FOUND})
    async def forget_device(device_id: str) -> Response:
        view.device_or_404(device_id)
        gateway.fleet.forget(device_id)
        gateway.series_budget.forget(device_id)
        gateway.compiler.forget_device(device_id)
        await gateway.db.write(lambda conn: store.forget_device(conn, device_id))
        return Response(status_code=204)

    @api.get("/api/v1/fleet/summary", response_model=FleetSummary, tags=["fleet"],
             dependencies=read, responses=ERRORS)
    async def fleet_summary() -> FleetSummary:
        fleet = gateway.fleet
        ranked = view.incomplete_ranked()
        buckets = dict.fromkeys(("100", "99-100", "95-99", "90-95", "<90"), 0)
        for pct, _ in ranked:
            buckets[_completeness_bucket(pct)] += 1
        # Devices without gaps that sent telemetry are complete (checked only when asked).
        buckets["100"] = fleet.reporting - len(ranked)
        worst = []
        for pct, device_id in ranked[:WORST_DEVICES]:
            record = fleet.devices[device_id]
            worst.append(WorstDevice(
                device_id=device_id, state=record.state, completeness_pct=pct,
                missing=completeness.totals(record, gateway.pipeline.ledger)[1]))
        budget = gateway.series_budget
        over = sorted(budget.refused.items(), key=lambda kv: -kv[1])[:WORST_DEVICES]
        return FleetSummary(
            total=len(fleet.devices), by_state=fleet.counts(),
            by_platform=dict(fleet.platforms.most_common()),
            by_firmware=dict(fleet.firmwares.most_common()), completeness=buckets, worst=worst,
            over_series_budget=[OverBudget(device_id=d, series=budget.series(d),
                                           refused_samples=n) for d, n in over])

    @api.get("/api/v1/events/stream", tags=["fleet"], response_class=StreamingResponse,
             responses={**ERRORS, 200: {"content": {"text/event-stream": {}},
                                        "description": "server-sent events"}})
    async def event_stream(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        device_id: str | None = None,
        access_token: Annotated[str | None, Query(
            description="the token, for EventSource clients that cannot set headers")] = None,
    ) -> StreamingResponse:
        authorize("read", credentials.credentials if credentials else access_token)
        subscription = gateway.events.subscribe(device_id)

        async def stream() -> AsyncIterator[str]:
            try:
                yield ": connected\n\n"
                while True:
                    if subscription.overflowed.is_set():
                        yield "event: overflow\ndata: {}\n\n"
                        return
                    try:
                        event = await asyncio.wait_for(subscription.queue.get(),
                                                       STREAM_KEEPALIVE_S)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if "end" in event:
                        return
                    yield f"event: device\nid: {event['id']}\ndata: {json.dumps(event)}\n\n"
            finally:
                gateway.events.unsubscribe(subscription)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ pipeline
    @api.get("/api/v1/pipeline", tags=["pipeline"], dependencies=read, responses=ERRORS)
    async def pipeline() -> dict[str, Any]:
        p, b = gateway.pipeline, gateway.buffer
        now_ms = int(time.time() * 1000)
        return {
            "mqtt_connected": gateway.ingest.connected,
            "uptime_s": (now_ms - gateway.started_ms) / 1000,
            "committed_upto": b.committed_upto,
            "buffer": {"frames": b.frames, "bytes": b.bytes,
                       "held_frames": sum(len(v) for v in p.held.values()),
                       "max_bytes": gateway.settings.buffer_max_bytes,
                       "full_policy": gateway.settings.buffer_full_policy},
            "dedup": {"keys": len(p.ledger)},
            "endpoints": [
                {"endpoint": f.endpoint, "cursor": f.cursor,
                 # entries of frame cursor + 1 already sent (a frame split across requests)
                 "cursor_offset": f.status.cursor_offset,
                 # paused: a configuration error (401/403/404/...), everything stays buffered
                 "state": ("paused" if f.status.paused else "retrying" if f.retrying
                           else "sending"),
                 "paused_reason": f.status.paused,
                 # remote_write_max_samples, or less after the endpoint answered 413
                 "max_samples_per_request": f.status.max_samples_per_request,
                 "behind_frames": max(0, b.committed_upto - f.cursor),
                 "oldest_unsent_age_s": gateway.unsent_age_s.get(f.endpoint, 0.0),
                 "send_rate_samples_per_s": round(gateway.send_rate(f.endpoint), 1),
                 "sent_samples": f.status.sent_samples, "retries": f.status.retries,
                 "dead_letters": f.status.dead_letters, "last_error": f.status.last_error,
                 "last_success_ms": f.status.last_success_ms, "retrying": f.retrying,
                 # (live_from, live_upto) while new frames go ahead of a backlog, else null
                 "live_lane": f.status.live_lane}
                for f in gateway.forwarders],
            # The newest start-up recovery of a damaged database (null if there never was one):
            # what was found, where the damaged copy is, salvaged and lost rows per table.
            "last_recovery": gateway.db.last_recovery,
        }

    @api.get("/api/v1/quarantine", tags=["pipeline"], dependencies=read, responses=ERRORS)
    async def quarantine(limit: Annotated[int, Query(ge=1, le=1000)] = 100
                         ) -> list[dict[str, Any]]:
        return await gateway.db.read(lambda conn: queries.quarantine_rows(conn, limit))

    @api.get("/api/v1/dead-letters", tags=["pipeline"], dependencies=read, responses=ERRORS)
    async def dead_letters(limit: Annotated[int, Query(ge=1, le=1000)] = 100
                           ) -> list[dict[str, Any]]:
        return await gateway.db.read(lambda conn: queries.dead_letter_rows(conn, limit))

    @api.post("/api/v1/dead-letters/replay", response_model=ReplayResult, tags=["pipeline"],
              dependencies=admin,
              responses={**ERRORS, 503: {"model": ErrorBody,
                                         "description": "an endpoint cannot be reached"}})
    async def replay_dead_letters(body: ReplayRequest | None = None) -> ReplayResult:
        body = body or ReplayRequest(limit=1000)
        forwarders = {f.endpoint: f for f in gateway.forwarders}
        if body.endpoint is not None and body.endpoint not in forwarders:
            raise ApiError(422, "invalid_request", f"no endpoint {body.endpoint!r} configured")
        letters = await gateway.db.read(
            lambda conn: store.dead_letters_to_replay(conn, body.endpoint, body.limit))
        delivered: list[int] = []
        refused: list[tuple[int, str, int]] = []
        by_endpoint: dict[str, list[tuple[int, bytes]]] = {}
        for letter_id, endpoint, entry in letters:
            by_endpoint.setdefault(endpoint, []).append((letter_id, entry))
        try:
            for endpoint, items in by_endpoint.items():
                forwarder = forwarders.get(endpoint)
                if forwarder is None:
                    continue  # an endpoint no longer configured: its letters stay
                took, again = await forwarder.replay(items)
                delivered += took
                refused += again
        except ForwardUnavailable as exc:
            raise ApiError(503, "unavailable", str(exc)) from exc
        finally:
            remaining = await gateway.db.write(
                lambda conn: store.settle_dead_letters(conn, delivered, refused))
        return ReplayResult(replayed=len(delivered), refused=len(refused), remaining=remaining)

    return api
