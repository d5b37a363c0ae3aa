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
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, get_args, get_origin, get_type_hints

from fastapi import Request
from fastapi import params as fastapi_params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.responses import Response

from service.security import check_api_key, require_api_key

# The dependencies this route class knows how to run cheaply: dependency -> its check on the request.
_GUARDS: dict[Callable[..., Any], Callable[[Request], None]] = {require_api_key: check_api_key}


class LeanRoute(APIRoute):
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
