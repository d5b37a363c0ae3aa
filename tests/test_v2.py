"""The KServe v2 / Open Inference Protocol surface with the shipped models and real MNIST digits,
through the test client and through the stock Triton HTTP client against a live server."""

from __future__ import annotations

import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

HEADER = "Inference-Header-Content-Length"
INFER = "/v2/models/lenet5/infer"


def v2_app(settings: Settings) -> FastAPI:
    """The app; the factory includes the v2 routes."""
    return create_app(settings)


@pytest.fixture(scope="module")
def app(models_dir: Path) -> FastAPI:
    return v2_app(Settings(models_dir=models_dir))


@pytest.fixture(scope="module")
def v2_client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def digits(mnist_test_sample) -> tuple[np.ndarray, np.ndarray]:
    """The first 20 real test digits as float32 [20,1,28,28] and their labels."""
    images, labels = mnist_test_sample
    return images[:20, None].astype(np.float32), labels[:20].astype(int)


def pixels(x: np.ndarray, datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    return {"name": "pixels", "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist(),
            **extra}


def output(body: dict[str, Any], name: str) -> np.ndarray:
    (out,) = [o for o in body["outputs"] if o["name"] == name]
    assert out["datatype"] == "FP32"
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def ok(response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def binary_request(doc: dict[str, Any], *blobs: bytes) -> dict[str, Any]:
    """Keyword arguments for client.post: JSON header, then raw tensor bytes (the binary extension)."""
    head = orjson.dumps(doc)
    return {"content": head + b"".join(blobs), "headers": {HEADER: str(len(head))}}


def split_binary_response(response) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(JSON header, {output name: array}) of a response carrying binary outputs."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    n = int(response.headers[HEADER])
    header = orjson.loads(response.content[:n])
    tail, arrays, offset = response.content[n:], {}, 0
    for out in header["outputs"]:
        size = out.get("parameters", {}).get("binary_data_size")
        if size is not None:
            assert "data" not in out
            arrays[out["name"]] = np.frombuffer(tail[offset:offset + size], "<f4").reshape(out["shape"])
            offset += size
    assert offset == len(tail)
    return header, arrays


# --- health and metadata -----------------------------------------------------------------------------------


def test_health_and_server_metadata(v2_client: TestClient, app: FastAPI) -> None:
    assert ok(v2_client.get("/v2/health/live")) == {"live": True}
    assert ok(v2_client.get("/v2/health/ready")) == {"ready": True}
    assert ok(v2_client.get("/v2")) == {"name": "digits", "version": app.version,
                                         "extensions": ["binary_tensor_data"]}


def test_model_metadata_and_readiness_for_every_model(v2_client: TestClient) -> None:
    models = ok(v2_client.get("/models"))["models"]
    assert {m["name"] for m in models} == {"lenet5", "mlp"}
    for m in models:
        expected = {
            "name": m["name"],
            "versions": [m["version"]],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
                        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
        }
        assert ok(v2_client.get(f"/v2/models/{m['name']}")) == expected
        assert ok(v2_client.get(f"/v2/models/{m['name']}/versions/{m['version']}")) == expected
        assert ok(v2_client.get(f"/v2/models/{m['name']}/ready")) == {"name": m["name"], "ready": True}
        assert ok(v2_client.get(f"/v2/models/{m['name']}/versions/{m['version']}/ready"))["ready"] is True


@pytest.mark.parametrize("path", ["/v2/models/resnet", "/v2/models/resnet/ready",
                                  "/v2/models/lenet5/versions/99", "/v2/models/lenet5/versions/99/ready"])
def test_metadata_of_an_unknown_model_or_version_is_404(v2_client: TestClient, path: str) -> None:
    response = v2_client.get(path)
    assert response.status_code == 404
    error = response.json()["error"]
    assert ("unknown model 'resnet'" in error and "lenet5" in error and "mlp" in error) or (
        "no version '99'" in error)


def test_a_model_that_failed_to_load_is_not_ready(models_dir: Path, tmp_path: Path) -> None:
    for f in models_dir.iterdir():
        if f.is_file():
            shutil.copy(f, tmp_path / f.name)
    (tmp_path / "mlp.onnx").write_bytes(b"not a model")
    with TestClient(v2_app(Settings(models_dir=tmp_path))) as c:
        response = c.get("/v2/health/ready")
        assert response.status_code == 503 and response.json()["ready"] is False
        assert "mlp" in response.json()["error"]
        response = c.get("/v2/models/mlp/ready")
        assert response.status_code == 503
        assert response.json()["ready"] is False and "SHA-256" in response.json()["error"]
        assert c.get("/v2/models/lenet5/ready").status_code == 200
        assert c.get("/v2/health/live").status_code == 200


def test_an_unloaded_model_is_not_ready_and_the_repository_extension_is_listed(models_dir: Path) -> None:
    with TestClient(v2_app(Settings(models_dir=models_dir, api_key="k"))) as c:
        assert ok(c.get("/v2"))["extensions"] == ["binary_tensor_data", "model_repository"]
        assert c.post("/v2/repository/models/mlp/unload", headers={"X-API-Key": "k"}).status_code == 200
        response = c.get("/v2/models/mlp/ready")
        assert response.status_code == 503
        assert response.json() == {"name": "mlp", "ready": False, "error": (
            "model 'mlp' is unloaded; load it with POST /v2/repository/models/mlp/load")}


# --- inference as JSON --------------------------------------------------------------------------------------


def test_infer_predicts_twenty_real_digits(v2_client: TestClient, digits) -> None:
    x, labels = digits
    body = ok(v2_client.post(INFER, json={"id": "batch-7", "inputs": [pixels(x)]}))
    assert body["model_name"] == "lenet5" and body["model_version"] and body["id"] == "batch-7"
    assert [o["name"] for o in body["outputs"]] == ["logits", "probabilities"]
    assert all(o["shape"] == [20, 10] for o in body["outputs"])
    probabilities, logits = output(body, "probabilities"), output(body, "logits")
    assert probabilities.argmax(1).tolist() == logits.argmax(1).tolist()
    assert (probabilities.argmax(1) == labels).sum() >= 19
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert probabilities.argmax(1)[:5].tolist() == [7, 2, 1, 0, 4]
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)


def test_infer_gives_the_numbers_of_predict_through_the_same_batcher(v2_client: TestClient, digits) -> None:
    x, _ = digits

    def images_seen() -> float:
        text = v2_client.get("/metrics").text
        return float(re.search(r'^digits_images_total\{model="mlp"\} (\S+)$', text, re.M).group(1))

    before = images_seen()
    body = ok(v2_client.post("/v2/models/mlp/infer", json={"inputs": [pixels(x)]}))
    assert images_seen() == before + 20
    predict = ok(v2_client.post("/predict?model=mlp", json={"pixels": x[:, 0].tolist()}))
    np.testing.assert_allclose(output(body, "probabilities"),
                               [p["probabilities"] for p in predict["predictions"]], atol=1e-6)


def test_nested_and_flat_data_and_every_numeric_datatype_agree(v2_client: TestClient, digits) -> None:
    x, _ = digits
    x = x[:4]
    flat = ok(v2_client.post(INFER, json={"inputs": [pixels(x)]}))
    nested = ok(v2_client.post(INFER, json={"inputs": [{**pixels(x), "data": x.tolist()}]}))
    assert nested["outputs"] == flat["outputs"]
    as_ints = {**pixels(x), "data": x.astype(int).ravel().tolist()}
    for datatype in ("UINT8", "INT32", "INT64", "FP64", "FP16"):
        body = ok(v2_client.post(INFER, json={"inputs": [{**as_ints, "datatype": datatype}]}))
        assert body["outputs"] == flat["outputs"], datatype


def test_only_the_requested_outputs_come_back_in_the_requested_order(v2_client: TestClient, digits) -> None:
    x, _ = digits
    both = ok(v2_client.post(INFER, json={"inputs": [pixels(x)]}))
    only = ok(v2_client.post(INFER,
                             json={"inputs": [pixels(x)], "outputs": [{"name": "probabilities"}]}))
    assert [o["name"] for o in only["outputs"]] == ["probabilities"] and "id" not in only
    np.testing.assert_array_equal(output(only, "probabilities"), output(both, "probabilities"))
    swapped = ok(v2_client.post(INFER, json={
        "inputs": [pixels(x)], "outputs": [{"name": "probabilities"}, {"name": "logits"}]}))
    assert [o["name"] for o in swapped["outputs"]] == ["probabilities", "logits"]


def test_the_versioned_infer_route(v2_client: TestClient, digits) -> None:
    x, labels = digits
    version = ok(v2_client.get("/v2/models/lenet5"))["versions"][0]
    body = ok(v2_client.post(f"/v2/models/lenet5/versions/{version}/infer", json={"inputs": [pixels(x)]}))
    assert body["model_version"] == version
    assert (output(body, "probabilities").argmax(1) == labels).sum() >= 19


# --- binary tensor data extension --------------------------------------------------------------------------


def test_binary_input_and_binary_output_round_trip(v2_client: TestClient, digits) -> None:
    x, labels = digits
    reference = ok(v2_client.post(INFER, json={"inputs": [pixels(x)]}))
    for datatype, blob in (("FP32", x.astype("<f4").tobytes()), ("UINT8", x.astype(np.uint8).tobytes()),
                           ("FP64", x.astype("<f8").tobytes())):
        doc = {"id": "b", "inputs": [{"name": "pixels", "shape": [20, 1, 28, 28], "datatype": datatype,
                                      "parameters": {"binary_data_size": len(blob)}}],
               "parameters": {"binary_data_output": True}}
        header, arrays = split_binary_response(v2_client.post(INFER,
                                                              **binary_request(doc, blob)))
        assert header["id"] == "b" and header["model_name"] == "lenet5"
        assert [o["name"] for o in header["outputs"]] == ["logits", "probabilities"]
        assert all(o["parameters"]["binary_data_size"] == 20 * 10 * 4 for o in header["outputs"])
        for name in ("logits", "probabilities"):
            np.testing.assert_allclose(arrays[name], output(reference, name), rtol=1e-6, atol=1e-6)
        assert (arrays["probabilities"].argmax(1) == labels).sum() >= 19


def test_binary_input_with_json_output_and_mixed_outputs(v2_client: TestClient, digits) -> None:
    x, labels = digits
    blob = x.astype(np.uint8).tobytes()
    binary_input = {"name": "pixels", "shape": [20, 1, 28, 28], "datatype": "UINT8",
                    "parameters": {"binary_data_size": len(blob)}}
    response = v2_client.post(INFER, **binary_request({"inputs": [binary_input]}, blob))
    assert response.headers["content-type"] == "application/json" and HEADER.lower() not in response.headers
    assert (output(response.json(), "probabilities").argmax(1) == labels).sum() >= 19

    doc = {"inputs": [binary_input],
           "outputs": [{"name": "logits"}, {"name": "probabilities", "parameters": {"binary_data": True}}]}
    header, arrays = split_binary_response(v2_client.post(INFER, **binary_request(doc, blob)))
    assert list(arrays) == ["probabilities"]
    np.testing.assert_array_equal(arrays["probabilities"].argmax(1), output(header, "logits").argmax(1))


# --- errors ------------------------------------------------------------------------------------------------

ONE = [0.0] * 784
GOOD_INPUT = {"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": ONE}


def _binary(size: int, blob: bytes, **extra: Any) -> dict[str, Any]:
    doc = {"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "UINT8",
                       "parameters": {"binary_data_size": size}, **extra}]}
    return binary_request(doc, blob)


@pytest.mark.parametrize(("path", "kwargs", "status", "message"), [
    ("/v2/models/resnet/infer", {"json": {"inputs": [GOOD_INPUT]}}, 404, "available models: lenet5, mlp"),
    ("/v2/models/lenet5/versions/99/infer", {"json": {"inputs": [GOOD_INPUT]}}, 404, "no version '99'"),
    (INFER, {"json": {"inputs": [{**GOOD_INPUT, "name": "image"}]}}, 422, "exactly one input, 'pixels'"),
    (INFER, {"json": {"inputs": [GOOD_INPUT, GOOD_INPUT]}}, 422, "exactly one input"),
    (INFER, {"json": {"inputs": []}}, 422, '"inputs" must be a list'),
    (INFER, {"json": {"inputs": [{**GOOD_INPUT, "shape": [1, 28, 28]}]}}, 422, "expected [N, 1, 28, 28]"),
    (INFER, {"json": {"inputs": [{**GOOD_INPUT, "shape": [0, 1, 28, 28], "data": []}]}}, 422,
     "N must be at least 1"),
    (INFER, {"json": {"inputs": [{**GOOD_INPUT, "data": ONE[:-1]}]}}, 422,
     "has 783 values but shape [1, 1, 28, 28] needs 784"),
    (INFER, {"json": {"inputs": [{**GOOD_INPUT, "data": [[1, 2], [3]]}]}}, 422, "ragged"),
    (INFER, {"json": {"inputs": [{**GOOD_INPUT, "data": ["7", *ONE[1:]]}]}}, 422, 'only numbers; found "7"'),
    (INFER, {"json": {"inputs": [{**GOOD_INPUT, "data": [None, *ONE[1:]]}]}}, 422,
     "only numbers; found null"),
    (INFER, {"json": {"inputs": [{**GOOD_INPUT, "data": "0,0,0"}]}}, 422, '"data" must be a list of numbers'),
    (INFER, {"json": {"inputs": [{**GOOD_INPUT, "data": [256.0, *ONE[1:]]}]}}, 422,
     "raw pixels 0-255 (white ink on black, MNIST style); found values from 0 to 256"),
    (INFER, {"json": {"inputs": [{**GOOD_INPUT, "data": [-1, *ONE[1:]]}]}}, 422, "found values from -1 to 0"),
    (INFER, {"json": {"inputs": [{**GOOD_INPUT, "datatype": "BYTES"}]}}, 422, "datatype 'BYTES'; use FP32"),
    (INFER, {"content": b'{"inputs": [', "headers": {"content-type": "application/json"}}, 422,
     "not valid JSON"),
    (INFER, {"json": [GOOD_INPUT]}, 422, "must be a JSON object"),
    (INFER, {"json": {"inputs": [GOOD_INPUT], "id": 5}}, 422, '"id" must be a string'),
    (INFER, {"json": {"inputs": [GOOD_INPUT], "outputs": [{"name": "softmax"}]}}, 422,
     "unknown output 'softmax'; this model has 'logits', 'probabilities'"),
    (INFER, {"json": {"inputs": [GOOD_INPUT], "outputs": [
        {"name": "probabilities", "parameters": {"classification": 3}}]}}, 422, "classification extension"),
    (INFER, _binary(784, b"\0" * 783), 422, "only 783 bytes after the JSON part"),
    (INFER, _binary(700, b"\0" * 700), 422, "binary_data_size is 700 but shape"),
    (INFER, _binary(784, b"\0" * 790), 422, "790 binary bytes but the inputs declare 784"),
    (INFER, _binary(784, b"\0" * 784, data=ONE), 422, 'both "data" and "binary_data_size"'),
    (INFER, {"content": orjson.dumps({"inputs": [GOOD_INPUT]}) + b"\0\0",
             "headers": {HEADER: str(len(orjson.dumps({"inputs": [GOOD_INPUT]})))}}, 422,
     "2 binary bytes after the JSON but no input declares"),
    (INFER, {"content": b"{}", "headers": {HEADER: "9"}}, 422, "must be the byte length of the JSON part"),
    (INFER, {"content": b"x", "headers": {"content-encoding": "gzip"}}, 415, "send the body uncompressed"),
])
def test_bad_requests_get_a_4xx_that_says_what_was_wrong(
    v2_client: TestClient, path: str, kwargs: dict[str, Any], status: int, message: str
) -> None:
    response = v2_client.post(path, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_too_many_images_is_413_before_the_data_is_read(v2_client: TestClient, app: FastAPI) -> None:
    limit = app.state.settings.max_images_per_request
    doc = {"inputs": [{**GOOD_INPUT, "shape": [limit + 1, 1, 28, 28]}]}
    response = v2_client.post(INFER, json=doc)
    assert response.status_code == 413
    assert response.json()["error"] == f"{limit + 1} images in one request; the limit is {limit}"


def test_non_finite_binary_values_are_refused(v2_client: TestClient) -> None:
    blob = np.zeros((1, 1, 28, 28), "<f4")
    blob[0, 0, 3, 3] = np.nan
    doc = {"inputs": [{"name": "pixels", "shape": [1, 1, 28, 28], "datatype": "FP32",
                       "parameters": {"binary_data_size": blob.nbytes}}]}
    response = v2_client.post(INFER, **binary_request(doc, blob.tobytes()))
    assert response.status_code == 422 and "NaN or infinite" in response.json()["error"]


def test_openapi_documents_the_v2_routes(v2_client: TestClient) -> None:
    schema = ok(v2_client.get("/openapi.json"))
    paths = schema["paths"]
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{model_name}",
                 "/v2/models/{model_name}/ready", "/v2/models/{model_name}/versions/{model_version}/infer"):
        assert path in paths
    infer = paths["/v2/models/{model_name}/infer"]["post"]
    body = infer["requestBody"]["content"]["application/json"]
    assert "inputs" in body["schema"]["properties"] and "$defs" not in orjson.dumps(body).decode()
    assert body["examples"]["json"]["value"]["inputs"][0]["name"] == "pixels"
    assert {"200", "404", "413", "422"} <= set(infer["responses"])


# --- the stock Triton client against a live server ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def live_port(models_dir: Path) -> Iterator[int]:
    """A real uvicorn server on 127.0.0.1 (in a thread), stopped at the end."""
    import uvicorn

    port = _free_port()
    config = uvicorn.Config(v2_app(Settings(models_dir=models_dir)), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="v2-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the test server did not start within 30 s"
    yield port
    server.should_exit = True
    thread.join(timeout=15)
    assert not thread.is_alive(), "the test server did not stop within 15 s"


def test_tritonclient_http_against_a_live_server(live_port: int, digits) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    x, labels = digits
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{live_port}", connection_timeout=10,
                                              network_timeout=10)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("lenet5") and not client.is_model_ready("resnet")
        assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
        meta = client.get_model_metadata("lenet5")
        assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
        version = meta["versions"][0]

        def infer(binary_input: bool, outputs: list | None = None, **kwargs: Any):
            inp = httpclient.InferInput("pixels", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary_input)
            return client.infer("lenet5", [inp], outputs=outputs, **kwargs)

        for binary_input in (True, False):
            result = infer(binary_input)  # no outputs named: every output, as binary data
            assert result.as_numpy("probabilities").shape == (20, 10)
            predicted = result.as_numpy("probabilities").argmax(1)
            assert result.as_numpy("logits").argmax(1).tolist() == predicted.tolist()
            assert (predicted == labels).sum() >= 19
            for binary_output in (True, False):
                result = infer(binary_input, [httpclient.InferRequestedOutput("probabilities",
                                                                              binary_data=binary_output)],
                               model_version=version, request_id="r1")
                assert result.as_numpy("logits") is None
                assert (result.as_numpy("probabilities").argmax(1) == labels).sum() >= 19
                assert result.get_response()["id"] == "r1"

        raw = httpclient.InferInput("pixels", list(x.shape), "UINT8")
        raw.set_data_from_numpy(x.astype(np.uint8))
        assert (client.infer("lenet5", [raw]).as_numpy("probabilities").argmax(1) == labels).sum() >= 19

        with pytest.raises(InferenceServerException, match="unknown model 'resnet'"):
            client.infer("resnet", [raw])
        bad = httpclient.InferInput("pixels", [1, 28, 28], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 28, 28), np.float32))
        with pytest.raises(InferenceServerException, match=re.escape("expected [N, 1, 28, 28]")):
            client.infer("lenet5", [bad])
    finally:
        client.close()
