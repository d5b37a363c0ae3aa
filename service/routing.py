"""``LeanRoute``: FastAPI documents the route; the endpoint does the per-request work itself."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.responses import Response


class LeanRoute(APIRoute):
    """A route whose endpoint takes the ``Request`` (and the path parameters, as strings) and returns a
    ``Response``.

    FastAPI still builds the route's OpenAPI entry from the decorator and the signature, but calls the
    endpoint directly: no per-request dependency solving, parameter validation or response-model
    serialisation. On the prediction routes that machinery cost more than the model, so these
    endpoints read, validate and answer by hand (and say exactly what was wrong when a request is bad).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            return await endpoint(request, **request.path_params)  # type: ignore[no-any-return]

        return handler
