"""LeanRoute keeps APIRoute's contract: the same endpoint, declared once with each route class, answers
the same to the same requests (query validation, the key guard, path parameters), and a route that
LeanRoute cannot run faithfully is refused when it is declared."""

from __future__ import annotations

from typing import Annotated

import pytest
from fastapi import Depends, FastAPI, Query, Request
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.responses import Response

from service.errors import install_error_handlers
from service.routing import LeanRoute
from service.schemas import PredictQuery
from service.security import API_KEY
from service.settings import Settings


async def echo(request: Request, name: str, query: Annotated[PredictQuery, Query()]) -> Response:
    return Response(f"{name} {query.model} {query.return_input}")


def app_with(route_class: type[APIRoute], api_key: str | None) -> FastAPI:
    app = FastAPI()
    app.state.settings = Settings(api_key=api_key)
    install_error_handlers(app)
    app.router.add_api_route("/echo/{name}", echo, methods=["POST"], route_class_override=route_class,
                             dependencies=[API_KEY])
    return app


@pytest.mark.parametrize("api_key", [None, "k"])
def test_lean_and_stock_routes_answer_alike(api_key: str | None) -> None:
    requests = [("/echo/a", {}), ("/echo/a?model=mlp&return_input=true", {}), ("/echo/b?return_input=maybe", {}),
                ("/echo/a", {"X-API-Key": "k"}), ("/echo/a?return_input=no", {"Authorization": "Bearer k"}),
                ("/echo/a", {"X-API-Key": "wrong"})]
    with TestClient(app_with(LeanRoute, api_key)) as lean, TestClient(app_with(APIRoute, api_key)) as stock:
        for path, headers in requests:
            a, b = lean.post(path, headers=headers), stock.post(path, headers=headers)
            assert (a.status_code, a.content) == (b.status_code, b.content), (path, headers)
        assert lean.post("/echo/x?model=m&return_input=1", headers={"X-API-Key": "k"}).text == "x m True"


def test_a_route_lean_route_cannot_run_is_refused_when_declared() -> None:
    def other() -> None:
        return None

    async def endpoint(request: Request, limit: int = 3) -> Response:
        return Response(b"")

    app = FastAPI()
    with pytest.raises(TypeError, match="only the API-key guard"):
        app.router.add_api_route("/a", endpoint, route_class_override=LeanRoute, dependencies=[Depends(other)])
    with pytest.raises(TypeError, match=r"cannot provide the endpoint's parameters \['limit'\]"):
        app.router.add_api_route("/b", endpoint, route_class_override=LeanRoute)
