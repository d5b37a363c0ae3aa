"""What every route needs from the app: its registry and settings, and a fast JSON response."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request
from starlette.responses import Response

from service.registry import ModelRegistry
from service.settings import Settings


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """orjson straight to bytes (numpy arrays and scalars included): no pydantic on the hot path."""
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, headers=headers,
                    media_type="application/json")


def registry_of(request: Request) -> ModelRegistry:
    return request.app.state.registry


def settings_of(request: Request) -> Settings:
    return request.app.state.settings
