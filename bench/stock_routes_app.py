"""The service with FastAPI's stock ``APIRoute`` in place of ``LeanRoute``: same routes, same models,
same validation, but every request through FastAPI's dependency solving.

`bench/bench_service.py --configs stock` runs it beside the service, which is how LeanRoute earns its
place (see service/routing.py).
"""

import fastapi.routing

import service.routing

service.routing.LeanRoute = fastapi.routing.APIRoute  # type: ignore[misc,assignment]  # before the routes are built

from service.app import app_from_env  # noqa: E402

__all__ = ["app_from_env"]
