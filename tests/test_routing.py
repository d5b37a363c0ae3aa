"""LeanRoute keeps APIRoute's contract: the same endpoint, declared once with each route class, answers
the same to the same requests (query validation, the key guard, path parameters), and a route that
LeanRoute cannot run faithfully is refused when it is declared; the service's fixed-path LeanRoutes,
served past the router, answer exactly as through it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pytest
from fastapi import Depends, FastAPI, Query, Request
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.responses import Response

from service import api, read
from service.app import create_app
from service.errors import install_error_handlers
from service.routing import DirectRoutes, LeanRoute
from service.schemas import PredictQuery
from service.security import API_KEY
from service.settings import Settings
from tests.helpers import png_bytes


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


def _service_app(models_dir: Path, *, api_key: str | None, direct: bool, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    if not direct:  # every request through FastAPI's router, as before DirectRoutes
        monkeypatch.setattr(DirectRoutes, "match", lambda self, method, path: None)
    return create_app(Settings(models_dir=models_dir, api_key=api_key, max_body_bytes=64 * 1024))


@pytest.mark.parametrize("api_key", [None, "k"])
def test_direct_routes_answer_as_the_router_does(
    models_dir: Path, mnist_test_sample: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch,
    api_key: str | None,
) -> None:
    """/predict, /read and /healthz are served past FastAPI's router (DirectRoutes): every answer, errors
    included, is byte for byte the router's, and the metrics name the route the same way."""
    images, labels = mnist_test_sample
    digit = images[0].tolist()
    png = png_bytes((255 - images[1]).astype(np.uint8))  # dark ink on white paper, as a scan
    key = {"X-API-Key": "k"}
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/predict", {"json": {"pixels": digit}, "headers": key}),
        ("POST", "/predict?model=mlp&return_input=true", {"json": {"pixels": [digit, digit]}, "headers": key}),
        ("POST", "/predict?return_input=maybe", {"json": {"pixels": digit}, "headers": key}),
        ("POST", "/predict?model=nope", {"json": {"pixels": digit}, "headers": key}),
        ("POST", "/predict", {"json": {"pixels": [[0] * 28] * 28}, "headers": key}),
        ("POST", "/predict", {"json": {"pixels": [[300] * 28] * 28}, "headers": key}),
        ("POST", "/predict", {"content": b"{not json", "headers": {**key, "Content-Type": "application/json"}}),
        ("POST", "/predict", {"content": b"x", "headers": {**key, "Content-Type": "text/plain"}}),
        ("POST", "/predict", {"content": b"0" * 70_000, "headers": {**key, "Content-Type": "application/json"}}),
        ("POST", "/predict", {"files": {"file": ("d.png", png, "image/png")}, "headers": key}),
        ("POST", "/predict", {"content": b"not a png", "headers": {**key, "Content-Type": "image/png"}}),
        ("POST", "/predict", {"json": {"pixels": digit}}),
        ("POST", "/predict", {"json": {"pixels": digit}, "headers": {"Authorization": "Bearer wrong"}}),
        ("POST", "/read", {"content": png, "headers": {**key, "Content-Type": "image/png"}}),
        ("POST", "/read", {"json": {"pixels": digit}, "headers": key}),
        ("GET", "/healthz", {}),
        ("GET", "/predict", {}),
    ]
    answers = {}
    for direct in (True, False):
        with monkeypatch.context() as patch, \
                TestClient(_service_app(models_dir, api_key=api_key, direct=direct, monkeypatch=patch)) as client:
            answers[direct] = [client.request(method, path, **kwargs) for method, path, kwargs in requests]
            metrics = client.get("/metrics").text
        routes = sorted(line.split("{")[1].split("}")[0] for line in metrics.splitlines()
                        if line.startswith("digits_requests_total{"))
        answers[direct].append(routes)  # type: ignore[arg-type]
    for (method, path, _), a, b in zip(requests, answers[True], answers[False], strict=False):
        assert (a.status_code, a.content) == (b.status_code, b.content), (method, path)
        assert sorted(a.headers.items()) == sorted(b.headers.items()), (method, path)
    assert answers[True][-1] == answers[False][-1]
    first = answers[True][0].json()["predictions"][0]
    assert first["digit"] == int(labels[0])
    statuses = [a.status_code for a in answers[True][:-1]]
    assert statuses == [200, 200, 422, 404, 422, 422, 422, 415, 413, 200, 422,
                        401 if api_key else 200, 401 if api_key else 200, 200, 422, 200, 405]


def test_direct_routes_are_the_fixed_path_lean_routes(models_dir: Path) -> None:
    app = create_app(Settings(models_dir=models_dir))
    direct = DirectRoutes(app.routes, [api.router, read.router])
    assert direct.paths == {("POST", "/predict"), ("POST", "/read"), ("GET", "/healthz")}
    # A route the app's router would match first keeps its requests.
    shadow = FastAPI()
    shadow.add_api_route("/predict", echo, methods=["POST"])
    shadow.include_router(api.router)
    assert ("POST", "/predict") not in DirectRoutes(shadow.routes, [api.router]).paths
