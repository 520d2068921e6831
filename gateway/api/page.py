"""The fleet page: GET / and its static files (gateway/api/static/), always open."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"

router = APIRouter()


@router.get("/", include_in_schema=False, response_model=None)
async def page() -> FileResponse | Response:
    index = STATIC_DIR / "index.html"
    if not index.is_file():
        return Response("fleetgate: the fleet page is not installed", status_code=404)
    return FileResponse(index)


def mount_static(api: FastAPI) -> None:
    """Serve /static/* (a mount: an APIRouter cannot carry one into the app)."""
    if STATIC_DIR.is_dir():
        api.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
