"""``LeanRoute``: the same contract as FastAPI's ``APIRoute``, run with less machinery per request.

For endpoints of one shape, ``async def endpoint(request: Request, [query: Annotated[Model, Query()]],
**path_params: str) -> Response`` with no dependencies but the API-key guard. FastAPI builds the
OpenAPI entry from that signature as for any route; per request, instead of solving the dependency
graph, this class runs the guard, validates the query string with the same pydantic model (a
``TypeAdapter``), and calls the endpoint. A bad query string raises the same
``RequestValidationError`` FastAPI would. On /predict and v2 infer the general machinery cost more than
the model itself (bench/bench_service.py measures it: the ``stock`` configuration serves the same
routes with ``APIRoute``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any, cast, get_args, get_origin, get_type_hints

from fastapi import Request
from fastapi import params as fastapi_params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, APIRouter
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send

from service.errors import error_answer
from service.security import check_api_key, require_api_key

# The dependencies this route class knows how to run cheaply: dependency -> its check on the request.
_GUARDS: dict[Callable[..., Any], Callable[[Request], None]] = {require_api_key: check_api_key}


class LeanRoute(APIRoute):
    lean_handler: Callable[[Request], Coroutine[Any, Any, Response]]  # guard, query, endpoint; no error handling

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint, guards, query = self.endpoint, self._guards(), self._query_model()
        accepted = {"request", *(query[:1] if query else ()), *self.param_convertors}
        extra = set(inspect.signature(endpoint).parameters) - accepted
        if extra:
            raise TypeError(f"{self.path}: LeanRoute cannot provide the endpoint's parameters {sorted(extra)}")

        async def handler(request: Request) -> Response:
            for check in guards:
                check(request)
            kwargs: dict[str, Any] = request.path_params
            if query is not None:
                name, adapter = query
                try:
                    kwargs = {**kwargs, name: adapter.validate_python(dict(request.query_params))}
                except ValidationError as exc:
                    raise RequestValidationError(
                        [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
                    ) from None
            return await endpoint(request, **kwargs)

        self.lean_handler = handler
        return handler

    def _guards(self) -> list[Callable[[Request], None]]:
        guards = []
        for dependency in self.dependencies:
            check = _GUARDS.get(dependency.dependency)  # type: ignore[arg-type]
            if check is None:
                raise TypeError(f"{self.path}: LeanRoute runs only the API-key guard, not "
                                f"{dependency.dependency!r}; use APIRoute for routes with other dependencies")
            guards.append(check)
        return guards

    def _query_model(self) -> tuple[str, TypeAdapter[Any]] | None:
        """(parameter name, validator) of the endpoint's ``Annotated[Model, Query()]`` parameter, if any."""
        for name, hint in get_type_hints(self.endpoint, include_extras=True).items():
            if get_origin(hint) is Annotated:
                model, *meta = get_args(hint)
                if any(isinstance(m, fastapi_params.Query) for m in meta) and issubclass(model, BaseModel):
                    return name, TypeAdapter(model)
        return None


class DirectRoutes:
    """The LeanRoutes at fixed paths (``/predict``, ``/read``, ``/healthz``), served without the router.

    Per request, FastAPI's stack below the service's middleware (its exception middleware, an exit stack
    for dependencies, the router's matching of every route, Starlette's request/response wrapper) cost a
    third of what a batched prediction costs the event loop. :class:`service.middleware.ServiceMiddleware`
    hands a request for one of these paths here instead: the same handler runs (key guard, query
    validation, endpoint), and an error becomes the same answer through :func:`service.errors.error_answer`,
    which the app's exception handlers use too. Anything else goes down FastAPI's stack as usual.

    A route is taken only where the app's router would pick it too: it belongs to one of ``routers``
    (included in the app as they are) and, for its path and method, neither an earlier route of the app
    nor an earlier route of its router matches first. Were FastAPI's routing to change shape, routes
    would fail that check and simply go through the router.
    """

    def __init__(self, app_routes: Sequence[BaseRoute], routers: Sequence[APIRouter]) -> None:
        self._routes: dict[tuple[str, str], LeanRoute] = {}
        for router in routers:
            for route in router.routes:
                # By the handler, not the class: bench/stock_routes_app.py swaps LeanRoute for APIRoute.
                if not isinstance(route, APIRoute) or not hasattr(route, "lean_handler") or route.param_convertors:
                    continue
                for method in route.methods or ():
                    probe: Scope = {"type": "http", "method": method, "path": route.path, "root_path": ""}
                    if _first_match(app_routes, probe) is router and _first_match(router.routes, probe) is route:
                        self._routes[(method, route.path)] = cast(LeanRoute, route)

    @property
    def paths(self) -> set[tuple[str, str]]:
        """(method, path) of every route served directly."""
        return set(self._routes)

    def match(self, method: str, path: str) -> LeanRoute | None:
        return self._routes.get((method, path))

    @staticmethod
    async def serve(route: LeanRoute, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = route
        scope["endpoint"] = route.endpoint
        request = Request(scope, receive, send)
        try:
            response = await route.lean_handler(request)
        except Exception as exc:
            answer = error_answer(exc, request)
            if answer is None:  # no handler for it: a server error, as FastAPI's stack would raise it
                raise
            response = answer
        await response(scope, receive, send)


def _first_match(routes: Sequence[BaseRoute], probe: Scope) -> object:
    """The route (an included router stands for its router) that matches ``probe`` first; None when the
    first to match does so only partly (another method) or none does."""
    for route in routes:
        match, _ = route.matches(probe)
        if match == Match.FULL:
            return getattr(route, "original_router", route)
        if match == Match.PARTIAL:
            return None
    return None
