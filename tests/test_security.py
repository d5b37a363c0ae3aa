"""Access control, CORS and the browser security headers, as a client sees them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.helpers import shipped_version

LENET5 = shipped_version("lenet5")

KEY = "s3cret-key-for-tests"
ORIGIN = "https://draw.example"
FOREIGN = "https://evil.example"


def infer_body(image: np.ndarray) -> dict:
    return {"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32",
                        "data": image.astype(float).ravel().tolist()}]}


@pytest.fixture(scope="module")
def digit(mnist_test_sample) -> tuple[np.ndarray, int]:
    images, labels = mnist_test_sample
    return images[0], int(labels[0])


@pytest.fixture(scope="module")
def keyed(models_dir: Path) -> Iterator[TestClient]:
    """The app with DIGITS_API_KEY set and one CORS origin allowed."""
    app = create_app(Settings(models_dir=models_dir, api_key=KEY, cors_origins=[ORIGIN]))
    with TestClient(app) as client:
        yield client


def protected_requests(image: np.ndarray) -> list[tuple[str, str, dict]]:
    """(method, path, request keywords) of every operation that needs the key."""
    pixels = {"json": {"pixels": image.tolist()}}
    return [
        ("POST", "/predict", pixels),
        ("POST", "/v2/models/lenet5/infer", {"json": infer_body(image)}),
        ("POST", f"/v2/models/lenet5/versions/{LENET5}/infer", {"json": infer_body(image)}),
        ("POST", "/v2/repository/index", {}),
        ("POST", "/v2/repository/models/mlp/load", {}),
        ("POST", "/v2/repository/models/mlp/unload", {}),
    ]


def message_and_code(body: dict) -> tuple[str, str]:
    """(message, code) of an error body: FastAPI's shape, or the v2 protocol's on the v2 inference routes."""
    return (body["detail"], body["error"]) if "detail" in body else (body["error"], body["code"])


OPEN_PATHS = ["/healthz", "/readyz", "/models", "/metrics", "/v2", "/v2/health/live", "/v2/health/ready",
              "/v2/models/lenet5", "/v2/models/lenet5/ready", f"/v2/models/lenet5/versions/{LENET5}", "/openapi.json",
              "/docs", "/", "/web/app.js"]


# --- without a key -----------------------------------------------------------------------------------------


def test_without_a_key_prediction_is_open_and_model_management_does_not_exist(client, digit) -> None:
    image, label = digit
    assert client.post("/predict", json={"pixels": image.tolist()}).json()["predictions"][0]["digit"] == label
    probabilities = client.post("/v2/models/lenet5/infer", json=infer_body(image)).json()["outputs"][1]["data"]
    assert int(np.argmax(probabilities)) == label
    for path in ("/v2/repository/index", "/v2/repository/models/lenet5/load", "/v2/repository/models/lenet5/unload"):
        assert client.post(path).status_code == 404, path
    assert client.get("/models").json()["models"][0]["name"] == "lenet5"  # nothing was unloaded
    assert "model_repository" not in client.get("/v2").json()["extensions"]
    schema = client.get("/openapi.json").json()
    assert not [p for p in schema["paths"] if p.startswith("/v2/repository")]
    assert "securitySchemes" not in schema["components"]


def test_an_empty_key_in_the_environment_means_no_key(monkeypatch) -> None:
    monkeypatch.setenv("DIGITS_API_KEY", "")
    assert Settings().api_key is None
    monkeypatch.setenv("DIGITS_API_KEY", KEY)
    assert Settings().api_key.get_secret_value() == KEY
    assert KEY not in repr(Settings())  # never printed with the settings


# --- with a key --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(6))
def test_every_protected_operation_without_the_key_is_401_with_a_challenge(keyed, digit, index) -> None:
    method, path, kwargs = protected_requests(digit[0])[index]
    response = keyed.request(method, path, **kwargs)
    assert response.status_code == 401, path
    assert response.headers["www-authenticate"].startswith("Bearer")
    message, code = message_and_code(response.json())
    assert "missing API key" in message and "X-API-Key" in message and code == "unauthorized"


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer wrong"},
    {"X-API-Key": "wrong"},
    {"X-API-Key": KEY[:-1]},  # a prefix of the key
    {"X-API-Key": KEY + "x"},  # the key and more
    {"X-API-Key": KEY.upper()},
    {"Authorization": f"Basic {KEY}"},  # the key, but not as a bearer token
    {"Authorization": KEY},
])
def test_a_wrong_key_is_401_and_not_echoed(keyed, digit, headers) -> None:
    for method, path, kwargs in protected_requests(digit[0])[:4]:
        response = keyed.request(method, path, headers=headers, **kwargs)
        assert response.status_code == 401, (path, headers)
        assert response.headers["www-authenticate"].startswith("Bearer")
        detail, _ = message_and_code(response.json())
        assert "API key" in detail and "wrong" not in detail and KEY not in detail


def test_a_wrong_key_beside_the_right_one_is_401_whichever_header_comes_first(keyed, digit) -> None:
    pixels = {"pixels": digit[0].tolist()}
    for headers in ([("X-API-Key", KEY), ("Authorization", "Bearer wrong")],
                    [("Authorization", "Bearer wrong"), ("X-API-Key", KEY)],
                    [("X-API-Key", KEY), ("X-API-Key", "wrong")],
                    [("X-API-Key", KEY), ("Authorization", "Bearer")],  # a bearer without its token
                    [("X-API-Key", KEY), ("Authorization", "Basic dXNlcjpwYXNz")]):
        response = keyed.post("/predict", json=pixels, headers=httpx.Headers(headers))
        assert response.status_code == 401 and message_and_code(response.json())[0] == "invalid API key", headers
    both = httpx.Headers([("X-API-Key", KEY), ("Authorization", f"Bearer {KEY}")])
    assert keyed.post("/predict", json=pixels, headers=both).status_code == 200


def test_no_state_changing_route_is_reachable_without_the_key(keyed) -> None:
    """Every route that takes anything but GET or HEAD, whatever it is, answers 401 without the key,
    so a route added later without the guard fails here."""
    state_changing = [(method, context.path) for context in iter_route_contexts(keyed.app.routes)
                      for method in (context.methods or set()) - {"GET", "HEAD"}]
    assert len(state_changing) >= 6, state_changing  # /predict, both v2 infer, the three repository routes
    for method, template in state_changing:
        path = re.sub(r"\{[^}]+\}", "1", template.replace("{model_name}", "lenet5").replace("{name}", "mlp"))
        response = keyed.request(method, path, json={})
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert keyed.get("/v2/models/mlp/ready").status_code == 200  # nothing was unloaded


def test_the_key_in_the_query_string_is_not_accepted(keyed, digit) -> None:
    response = keyed.post(f"/predict?api_key={KEY}", json={"pixels": digit[0].tolist()})
    assert response.status_code == 401


@pytest.mark.parametrize("headers", [
    {"Authorization": f"Bearer {KEY}"},
    {"Authorization": f"bearer {KEY}"},
    {"X-API-Key": KEY},
])
def test_the_right_key_as_bearer_token_or_x_api_key_is_accepted(keyed, digit, headers) -> None:
    image, label = digit
    response = keyed.post("/predict", json={"pixels": image.tolist()}, headers=headers)
    assert response.status_code == 200 and response.json()["predictions"][0]["digit"] == label
    response = keyed.post("/v2/models/lenet5/infer", json=infer_body(image), headers=headers)
    assert response.status_code == 200
    assert int(np.argmax(response.json()["outputs"][1]["data"])) == label
    index = keyed.post("/v2/repository/index", headers=headers)
    assert index.status_code == 200 and {m["name"] for m in index.json()} == {"lenet5", "mlp"}


def test_model_management_needs_the_key_and_works_with_it(keyed) -> None:
    assert keyed.post("/v2/repository/models/mlp/unload").status_code == 401
    assert keyed.get("/v2/models/mlp/ready").status_code == 200  # the refused call changed nothing
    headers = {"X-API-Key": KEY}
    assert keyed.post("/v2/repository/models/mlp/unload", headers=headers).json()["state"] == "UNAVAILABLE"
    assert keyed.get("/v2/models/mlp/ready").status_code == 503
    assert keyed.post("/v2/repository/models/mlp/load", headers=headers).json()["state"] == "READY"
    assert keyed.get("/v2/models/mlp/ready").status_code == 200


@pytest.mark.parametrize("path", OPEN_PATHS)
def test_health_readiness_metadata_docs_and_page_stay_open(keyed, path) -> None:
    assert keyed.get(path).status_code == 200, path


def test_a_root_path_prefix_does_not_get_around_the_key(models_dir: Path, digit) -> None:
    """Behind `uvicorn --root-path /api` (or a proxy that sets it) every path starts with the prefix."""
    app = create_app(Settings(models_dir=models_dir, api_key=KEY))
    with TestClient(app, root_path="/api") as prefixed:
        pixels = {"pixels": digit[0].tolist()}
        assert prefixed.post("/api/predict", json=pixels).status_code == 401
        assert prefixed.post("/api/v2/models/lenet5/infer", json=infer_body(digit[0])).status_code == 401
        assert prefixed.post("/api/v2/repository/index").status_code == 401
        assert prefixed.post("/api/predict", json=pixels, headers={"X-API-Key": KEY}).status_code == 200
        assert prefixed.get("/api/healthz").status_code == 200


def test_the_openapi_document_declares_the_key_where_it_is_needed(keyed) -> None:
    schema = keyed.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearer"]["scheme"] == "bearer" and schemes["apiKey"]["name"] == "X-API-Key"
    for path in ("/predict", "/v2/models/{model_name}/infer", "/v2/repository/index"):
        operation = schema["paths"][path]["post"]
        assert operation["security"] == [{"bearer": []}, {"apiKey": []}] and "401" in operation["responses"]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    assert "security" not in schema["paths"]["/v2/models/{model_name}"]["get"]


# --- CORS --------------------------------------------------------------------------------------------------


def preflight(client: TestClient, origin: str, path: str = "/predict"):
    return client.options(path, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                         "Access-Control-Request-Headers": "content-type,x-api-key"})


def test_cors_by_default_allows_no_other_origin(client, digit) -> None:
    response = client.post("/predict", json={"pixels": digit[0].tolist()}, headers={"Origin": FOREIGN})
    assert response.status_code == 200  # a server answers; the browser withholds it from the foreign page
    assert "access-control-allow-origin" not in response.headers
    response = preflight(client, FOREIGN)
    assert response.status_code == 405 and "access-control-allow-origin" not in response.headers


def test_a_configured_origin_passes_the_preflight_without_a_key_and_reads_answers(keyed, digit) -> None:
    response = preflight(keyed, ORIGIN)
    assert response.status_code == 200  # not 401: a preflight never carries the key
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "x-api-key" in response.headers["access-control-allow-headers"].lower()
    assert "POST" in response.headers["access-control-allow-methods"]
    pixels = {"pixels": digit[0].tolist()}
    answer = keyed.post("/predict", json=pixels, headers={"Origin": ORIGIN, "X-API-Key": KEY})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == ORIGIN
    refused = keyed.post("/predict", json=pixels, headers={"Origin": ORIGIN})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN


def test_a_configured_origin_does_not_open_the_door_to_others(keyed, digit) -> None:
    response = preflight(keyed, FOREIGN)
    assert response.status_code == 400 and "access-control-allow-origin" not in response.headers
    answer = keyed.post("/predict", json={"pixels": digit[0].tolist()}, headers={"Origin": FOREIGN, "X-API-Key": KEY})
    assert "access-control-allow-origin" not in answer.headers


def test_cors_origins_come_from_a_json_list_in_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("DIGITS_CORS_ORIGINS", f'["{ORIGIN}", "http://localhost:3000"]')
    assert Settings().cors_origins == [ORIGIN, "http://localhost:3000"]


# --- headers of the page -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/web/app.js", "/web/style.css", "/web/index.html"])
def test_the_page_and_its_files_carry_a_strict_csp_and_the_security_headers(client, path) -> None:
    response = client.get(path)
    assert response.status_code == 200
    csp = {d.split()[0]: d.split()[1:] for d in response.headers["content-security-policy"].split("; ")}
    assert csp["default-src"] == ["'self'"] and csp["script-src"] == ["'self'"]
    assert csp["object-src"] == ["'none'"] and csp["frame-ancestors"] == ["'none'"]
    assert csp["connect-src"] == ["'self'"]  # the page talks to its own origin only
    assert not [d for d, values in csp.items() if "'unsafe-inline'" in values or "'unsafe-eval'" in values]
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


def test_the_page_has_no_inline_code_that_the_csp_would_block(client) -> None:
    html = client.get("/").text
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S | re.I)
    assert scripts and all("src=" in attributes and not body.strip() for attributes, body in scripts)
    assert not re.search(r"\son[a-z]+\s*=", html, flags=re.I)  # no onclick= and the like
    assert not re.search(r"<style\b|\sstyle\s*=", html, flags=re.I)


def test_api_answers_carry_nosniff_even_when_refused(keyed, digit) -> None:
    for response in (keyed.get("/healthz"), keyed.post("/predict", json={"pixels": digit[0].tolist()}),
                     keyed.post("/predict", content=b"x", headers={"content-type": "text/plain", "X-API-Key": KEY})):
        assert response.headers["x-content-type-options"] == "nosniff", response.status_code
