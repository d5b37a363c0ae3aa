"""Model management: the KServe/Triton model-repository extension.

Mounted only when an API key is set (``enabled``), and always behind it (see service/security.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.deps import json_response, registry_of
from service.schemas import ErrorResponse
from service.security import API_KEY
from service.settings import Settings

router = APIRouter(prefix="/v2/repository", tags=["model repository"], dependencies=[API_KEY])
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 404)}


def enabled(settings: Settings) -> bool:
    """Model management exists only behind a key."""
    return settings.api_key is not None


@router.post("/index", summary="Every model of the manifest and its state", responses=_ERRORS)
async def index(request: Request) -> Response:
    registry = registry_of(request)
    entries = registry.manifest.entries if registry.manifest else ()
    out = []
    for entry in entries:
        served = registry.served.get(entry.name)
        item = {"name": entry.name, "version": served.model.version if served else entry.version,
                "state": "READY" if served else "UNAVAILABLE"}
        if not served:
            item["reason"] = registry.failed.get(entry.name, "unloaded")
        out.append(item)
    return json_response(out)


@router.post("/models/{name}/load", summary="Load or reload a model from disk (verified, warmed, then swapped in)",
             responses=_ERRORS)
async def load(request: Request, name: str) -> Response:
    model = await registry_of(request).load(name)
    return json_response({"name": model.name, "version": model.version, "sha256": model.sha256, "state": "READY"})


@router.post("/models/{name}/unload", summary="Stop serving a model (queued requests finish)", responses=_ERRORS)
async def unload(request: Request, name: str) -> Response:
    await registry_of(request).unload(name)
    return json_response({"name": name, "state": "UNAVAILABLE"})
