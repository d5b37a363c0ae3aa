"""POST /read through the HTTP API: numbers of real MNIST test digits, every way of sending them."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from testkit import handwriting


@pytest.fixture(scope="module")
def numbers(mnist_test_sample: tuple[np.ndarray, np.ndarray]) -> list[handwriting.Sample]:
    digits, labels = mnist_test_sample
    return list(handwriting.numbers(digits, labels, 24, seed=41))


def _check_reading(reading: dict, sample: handwriting.Sample) -> None:
    assert set(reading) == {"text", "confidence", "digits"}
    assert reading["text"] == "".join(str(d["digit"]) for d in reading["digits"])
    product = float(np.prod([d["confidence"] for d in reading["digits"]]))
    assert reading["confidence"] == pytest.approx(product, rel=1e-5)
    xs = [d["box"]["x"] for d in reading["digits"]]
    assert xs == sorted(xs)  # left to right
    for digit in reading["digits"]:
        assert digit["confidence"] == pytest.approx(max(digit["probabilities"]))
        assert sum(digit["probabilities"]) == pytest.approx(1.0, abs=1e-4)
        assert set(digit["box"]) == {"x", "y", "width", "height"}


def test_read_multipart_numbers(client: TestClient, numbers: list[handwriting.Sample]) -> None:
    files = [("file", (f"n{i}", s.data, "image/png" if s.kind.endswith("canvas") else "image/jpeg"))
             for i, s in enumerate(numbers)]
    response = client.post("/read", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "lenet5" and body["version"]
    assert len(body["readings"]) == len(numbers)
    exact = 0
    for reading, sample in zip(body["readings"], numbers, strict=True):
        _check_reading(reading, sample)
        exact += reading["text"] == sample.text
    assert exact >= 0.75 * len(numbers), f"{exact} of {len(numbers)} read exactly"


def test_read_raw_body_and_base64_agree(client: TestClient, numbers: list[handwriting.Sample]) -> None:
    sample = numbers[0]
    raw = client.post("/read?model=lenet5", content=sample.data, headers={"content-type": "image/png"})
    encoded = client.post("/read", json={"images": [base64.b64encode(sample.data).decode()]})
    assert raw.status_code == encoded.status_code == 200
    assert raw.json()["readings"] == encoded.json()["readings"]
    boxes = [tuple(d["box"].values()) for d in raw.json()["readings"][0]["digits"]]
    if len(boxes) == len(sample.boxes):
        for found, truth in zip(boxes, sample.boxes, strict=True):
            assert abs(found[0] - truth[0]) <= 0.2 * truth[3] and abs(found[1] - truth[1]) <= 0.2 * truth[3]


def test_all_digits_of_a_request_go_to_the_model_in_one_batch(
    client: TestClient, numbers: list[handwriting.Sample], monkeypatch: pytest.MonkeyPatch
) -> None:
    batcher = client.app.state.registry.get(None).batcher
    calls: list[int] = []
    submit = batcher.submit

    async def counting(x: np.ndarray, deadline: float | None = None) -> tuple[np.ndarray, ...]:
        calls.append(len(x))
        return await submit(x, deadline)

    monkeypatch.setattr(batcher, "submit", counting)
    files = [("file", ("a", numbers[0].data, "image/png")), ("file", ("b", numbers[1].data, "image/jpeg"))]
    body = client.post("/read", files=files).json()
    assert calls == [sum(len(r["digits"]) for r in body["readings"])]


def test_read_errors(client: TestClient) -> None:
    blank = next(handwriting.empty_photos(1, seed=42)).data
    response = client.post("/read", content=blank, headers={"content-type": "image/jpeg"})
    assert response.status_code == 422 and "no ink" in response.json()["detail"]
    response = client.post("/read", json={"pixels": [[0] * 28] * 28})
    assert response.status_code == 422 and "POST /predict" in response.json()["detail"]
    response = client.post("/read", content=b"not an image", headers={"content-type": "image/png"})
    assert response.status_code == 422 and "could not decode image" in response.json()["detail"]
    response = client.post("/read?model=nope", content=blank, headers={"content-type": "image/jpeg"})
    assert response.status_code == 404
    response = client.post("/read", content=b"x", headers={"content-type": "text/plain"})
    assert response.status_code == 415


def test_predict_refuses_an_all_zero_pixel_array(client: TestClient) -> None:
    response = client.post("/predict", json={"pixels": [[0] * 28] * 28})
    assert response.status_code == 422 and "no ink" in response.json()["detail"]


def test_read_is_documented(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/read"]["post"]
    assert {"multipart/form-data", "application/json", "image/*"} <= set(operation["requestBody"]["content"])
    assert operation["responses"]["200"]["content"]["application/json"]["example"]["readings"][0]["text"] == "42"
    assert {"413", "422", "404"} <= set(operation["responses"])


@pytest.fixture(scope="module")
def keyed(models_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(models_dir=models_dir, api_key="k" * 24))) as test_client:
        yield test_client


def test_read_needs_the_key_when_one_is_set(keyed: TestClient, numbers: list[handwriting.Sample]) -> None:
    assert keyed.post("/read", content=numbers[0].data, headers={"content-type": "image/png"}).status_code == 401
    response = keyed.post("/read", content=numbers[0].data,
                          headers={"content-type": "image/png", "authorization": "Bearer " + "k" * 24})
    assert response.status_code == 200
