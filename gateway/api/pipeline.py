"""Routes of the "pipeline" tag: the data path's status, quarantined frames, dead letters and
their replay (docs/api.md)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query

from gateway.api.auth import ADMIN, READ, Port
from gateway.api.port import EndpointStatus, PipelineStatus
from gateway.api.schemas import ERRORS, ApiError, ErrorBody, ReplayRequest, ReplayResult
from gateway.errors import ForwardUnavailable

router = APIRouter(tags=["pipeline"])


def _endpoint(e: EndpointStatus, committed_upto: int) -> dict[str, Any]:
    return {
        "endpoint": e.endpoint, "cursor": e.cursor,
        # entries of frame cursor + 1 already sent (a frame split across requests)
        "cursor_offset": e.cursor_offset,
        # paused: a configuration error (401/403/404/...), everything stays buffered
        "state": "paused" if e.paused else "retrying" if e.retrying else "sending",
        "paused_reason": e.paused,
        # remote_write_max_samples, or less after the endpoint answered 413
        "max_samples_per_request": e.max_samples_per_request,
        "behind_frames": max(0, committed_upto - e.cursor),
        "oldest_unsent_age_s": e.oldest_unsent_age_s,
        "send_rate_samples_per_s": round(e.send_rate_samples_per_s, 1),
        "sent_samples": e.sent_samples, "retries": e.retries,
        "dead_letters": e.dead_letters, "last_error": e.last_error,
        "last_success_ms": e.last_success_ms, "retrying": e.retrying,
        # (live_from, live_upto) while new frames go ahead of a backlog, else null
        "live_lane": e.live_lane}


def _status(p: PipelineStatus, now_ms: int) -> dict[str, Any]:
    return {
        "mqtt_connected": p.mqtt_connected,
        "uptime_s": (now_ms - p.started_ms) / 1000,
        "committed_upto": p.committed_upto,
        "buffer": {"frames": p.buffer_frames, "bytes": p.buffer_bytes,
                   "held_frames": p.held_frames, "max_bytes": p.buffer_max_bytes,
                   "full_policy": p.buffer_full_policy},
        "dedup": {"keys": p.dedup_keys},
        "endpoints": [_endpoint(e, p.committed_upto) for e in p.endpoints],
        # The newest start-up recovery of a damaged database (null if there never was one):
        # what was found, where the damaged copy is, salvaged and lost rows per table.
        "last_recovery": p.last_recovery,
    }


@router.get("/api/v1/pipeline", dependencies=READ, responses=ERRORS)
async def pipeline(port: Port) -> dict[str, Any]:
    return _status(port.pipeline_status(), int(time.time() * 1000))


@router.get("/api/v1/quarantine", dependencies=READ, responses=ERRORS)
async def quarantine(port: Port, limit: Annotated[int, Query(ge=1, le=1000)] = 100
                     ) -> list[dict[str, Any]]:
    return await port.quarantine_rows(limit)


@router.get("/api/v1/dead-letters", dependencies=READ, responses=ERRORS)
async def dead_letters(port: Port, limit: Annotated[int, Query(ge=1, le=1000)] = 100
                       ) -> list[dict[str, Any]]:
    return await port.dead_letter_rows(limit)


@router.post("/api/v1/dead-letters/replay", response_model=ReplayResult, dependencies=ADMIN,
             responses={**ERRORS, 503: {"model": ErrorBody,
                                        "description": "an endpoint cannot be reached"}})
async def replay_dead_letters(port: Port, body: ReplayRequest | None = None) -> ReplayResult:
    body = body or ReplayRequest(limit=1000)
    if body.endpoint is not None and body.endpoint not in port.endpoint_names:
        raise ApiError(422, "invalid_request", f"no endpoint {body.endpoint!r} configured")
    try:
        outcome = await port.replay_dead_letters(body.endpoint, body.limit)
    except ForwardUnavailable as exc:
        raise ApiError(503, "unavailable", str(exc)) from exc
    return ReplayResult(replayed=outcome.replayed, refused=outcome.refused,
                        remaining=outcome.remaining)
