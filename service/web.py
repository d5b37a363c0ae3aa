"""The drawing page: `/` serves clients/web/index.html, `/web/*` its static files.

Every answer carries ``Cache-Control: no-cache``: the files have no content hash in their
names (there is no build step), so a browser must revalidate them (a cheap 304 thanks to
the ETag) rather than mix a cached app.js with a newer index.html after an upgrade.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

WEB_DIR = Path(__file__).resolve().parents[1] / "clients" / "web"
CACHE_CONTROL = "no-cache"

router = APIRouter()


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html",
                        headers={"Cache-Control": CACHE_CONTROL})


class _RevalidatedStaticFiles(StaticFiles):
    """StaticFiles whose answers (200 and 304 alike) tell the browser to revalidate."""

    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope,
                      status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = CACHE_CONTROL
        return response


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/web", _RevalidatedStaticFiles(directory=WEB_DIR, check_dir=False), name="web")
