"""Routes of the "health" tag, always open: liveness, readiness and the Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.api.auth import Port

READY_WRITE_TIMEOUT_S = 2.0

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready"}})
async def readyz(port: Port) -> JSONResponse:
    problems = []
    if not port.mqtt_connected:
        problems.append("not connected to the MQTT broker")
    try:
        await asyncio.wait_for(port.probe_write(), READY_WRITE_TIMEOUT_S)
    except Exception as exc:
        problems.append(f"database not writable: {exc}")
    if not port.last_commit_ok:
        problems.append("last group commit failed (retrying)")
    status = 503 if problems else 200
    return JSONResponse({"ready": not problems, "problems": problems}, status_code=status)


@router.get("/metrics", response_class=Response)
async def metrics(port: Port) -> Response:
    # In a thread: with per-device families, 100,000 devices make ~30 MB of text, a
    # quarter second that would otherwise stall ingest (the renderers copy what they read).
    return Response(await asyncio.to_thread(port.render_metrics), media_type=CONTENT_TYPE_LATEST)
