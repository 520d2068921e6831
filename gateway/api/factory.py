"""create_api: the FastAPI application, assembled from the routers of each tag, served against
one GatewayPort (uvicorn on the gateway's own event loop, or httpx.ASGITransport in tests)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import __version__
from gateway.api import fleet, health, page, pipeline
from gateway.api.port import GatewayPort
from gateway.api.schemas import ApiError


async def api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse({"error": exc.error, "detail": exc.detail}, status_code=exc.status,
                        headers=headers)


async def invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
        for e in exc.errors())
    return JSONResponse({"error": "invalid_request", "detail": problems}, status_code=422)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:  # FastAPI's "error parsing the body": like any bad request
        return JSONResponse({"error": "invalid_request", "detail": str(exc.detail)},
                            status_code=422)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
    return JSONResponse({"error": code, "detail": str(exc.detail)},
                        status_code=exc.status_code)


def create_api(port: GatewayPort) -> FastAPI:
    api = FastAPI(title="fleetgate", version=__version__,
                  description="Fleet telemetry gateway: devices, pipeline health, metrics. "
                              "See docs/api.md.")
    api.state.gateway_port = port
    api.add_exception_handler(ApiError, api_error)
    api.add_exception_handler(RequestValidationError, invalid)
    api.add_exception_handler(StarletteHTTPException, http_error)
    api.include_router(page.router)
    page.mount_static(api)
    api.include_router(health.router)
    api.include_router(fleet.router)
    api.include_router(pipeline.router)
    return api
