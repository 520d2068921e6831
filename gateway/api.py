"""Operator API (FastAPI), served by uvicorn on the gateway's own event loop.

Routes only read state and format it; nothing here parses frames or writes the buffer.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from gateway import __version__, store

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.fleet import DeviceRecord

READY_WRITE_TIMEOUT_S = 2.0


class DeviceSummary(BaseModel):
    device_id: str
    online: bool
    platform: str | None
    firmware: str | None
    boot: int | None
    last_seen_ms: int
    last_seq: int | None


class LatestValue(BaseModel):
    value: float | str | None  # NaN/Inf are served as strings: JSON has no such numbers
    timestamp_ms: int


class DeviceDetail(DeviceSummary):
    interval_ms: int | None
    labels: dict[str, str]
    first_seen_ms: int
    latest: dict[str, LatestValue]


class DeviceList(BaseModel):
    count: int
    devices: list[DeviceSummary]


def _json_value(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def _summary(record: DeviceRecord) -> DeviceSummary:
    return DeviceSummary(device_id=record.device_id, online=record.online,
                         platform=record.platform, firmware=record.firmware, boot=record.boot,
                         last_seen_ms=record.last_seen_ms, last_seq=record.last_seq)


def create_api(gateway: Gateway) -> FastAPI:
    api = FastAPI(title="fleetgate", version=__version__,
                  description="Fleet telemetry gateway: devices, pipeline health, metrics.")

    @api.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", tags=["health"])
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

    @api.get("/metrics", tags=["health"])
    async def metrics() -> Response:
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @api.get("/api/v1/devices", response_model=DeviceList, tags=["fleet"])
    async def devices() -> DeviceList:
        records = sorted(gateway.fleet.devices.values(), key=lambda r: r.device_id)
        return DeviceList(count=len(records), devices=[_summary(r) for r in records])

    @api.get("/api/v1/devices/{device_id}", response_model=DeviceDetail, tags=["fleet"])
    async def device(device_id: str) -> DeviceDetail:
        record = gateway.fleet.devices.get(device_id)
        if record is None:
            raise HTTPException(404, detail=f"unknown device {device_id!r}")
        latest = {k: LatestValue(value=_json_value(v), timestamp_ms=t)
                  for k, (v, t) in sorted(record.latest().items())}
        return DeviceDetail(**_summary(record).model_dump(), interval_ms=record.interval_ms,
                            labels=record.labels, first_seen_ms=record.first_seen_ms,
                            latest=latest)

    @api.get("/api/v1/pipeline", tags=["pipeline"])
    async def pipeline() -> dict[str, Any]:
        p = gateway.pipeline
        now_ms = int(time.time() * 1000)
        return {
            "mqtt_connected": gateway.ingest.connected,
            "uptime_s": (now_ms - gateway.started_ms) / 1000,
            "committed_upto": p.committed_upto,
            "buffer": {"frames": p.buffer_frames, "bytes": p.buffer_bytes,
                       "held_frames": sum(len(v) for v in p.held.values()),
                       "max_bytes": gateway.settings.buffer_max_bytes,
                       "full_policy": gateway.settings.buffer_full_policy},
            "dedup": {"keys": len(p.ledger)},
            "endpoints": [
                {"endpoint": f.endpoint, "cursor": f.cursor, "behind_frames":
                 max(0, p.committed_upto - f.cursor), "sent_samples": f.status.sent_samples,
                 "dead_letters": f.status.dead_letters, "last_error": f.status.last_error,
                 "last_success_ms": f.status.last_success_ms,
                 # (live_from, live_upto) while new frames go ahead of a backlog, else null
                 "live_lane": f.status.live_lane}
                for f in gateway.forwarders],
            # The newest start-up recovery of a damaged database (null if there never was one):
            # what was found, where the damaged copy is, salvaged and lost rows per table.
            "last_recovery": gateway.db.last_recovery,
        }

    @api.get("/api/v1/quarantine", tags=["pipeline"])
    async def quarantine(limit: int = 100) -> list[dict[str, Any]]:
        return await gateway.db.read(lambda conn: store.quarantine_rows(conn, min(limit, 1000)))

    @api.get("/api/v1/dead-letters", tags=["pipeline"])
    async def dead_letters(limit: int = 100) -> list[dict[str, Any]]:
        return await gateway.db.read(lambda conn: store.dead_letter_rows(conn, min(limit, 1000)))

    return api
