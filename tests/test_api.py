"""The service's HTTP surface with the shipped models and real MNIST digits."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service import api, imaging
from service.app import create_app
from service.settings import Settings
from testkit import handwriting
from tests.helpers import png_bytes


def pixels_json(images: np.ndarray) -> dict:
    return {"pixels": images.astype(int).tolist()}


def digits_of(response) -> list[int]:
    assert response.status_code == 200, response.text
    return [p["digit"] for p in response.json()["predictions"]]


# --- predictions -------------------------------------------------------------------------------------------


def test_json_pixels_single_image_predicts_real_digits(client, mnist_test_sample) -> None:
    images, labels = mnist_test_sample
    got = [digits_of(client.post("/predict", json=pixels_json(images[i])))[0] for i in range(20)]
    assert sum(g == int(y) for g, y in zip(got, labels[:20], strict=True)) >= 19
    body = client.post("/predict", json=pixels_json(images[0])).json()
    assert body["model"] == "lenet5" and body["version"]
    (p,) = body["predictions"]
    assert len(p["probabilities"]) == 10 and abs(sum(p["probabilities"]) - 1) < 1e-4
    assert p["confidence"] == max(p["probabilities"]) and p["label"] == str(p["digit"])


def test_json_pixels_batch_keeps_order(client, mnist_test_sample) -> None:
    images, labels = mnist_test_sample
    got = digits_of(client.post("/predict", json=pixels_json(images[:50])))
    assert len(got) == 50
    assert np.mean(np.array(got) == labels[:50]) >= 0.98


def test_every_encoding_of_the_same_digits_gives_the_same_answer(client, mnist_test_sample) -> None:
    images, labels = mnist_test_sample
    chosen = images[:8]
    pngs = [png_bytes(im) for im in chosen]
    via_pixels = digits_of(client.post("/predict", json=pixels_json(chosen)))
    via_base64 = digits_of(client.post("/predict", json={"images": [base64.b64encode(b).decode() for b in pngs]}))
    via_data_url = digits_of(client.post(
        "/predict", json={"images": ["data:image/png;base64," + base64.b64encode(b).decode() for b in pngs]}))
    via_upload = digits_of(client.post("/predict", files=[("file", (f"{i}.png", b, "image/png"))
                                                         for i, b in enumerate(pngs)]))
    via_raw = [digits_of(client.post("/predict", content=b, headers={"content-type": "image/png"}))[0] for b in pngs]
    assert via_pixels == via_base64 == via_data_url == via_upload == via_raw == labels[:8].tolist()


def test_upload_of_a_large_drawn_digit_off_centre_on_a_transparent_canvas(client, mnist_test_sample) -> None:
    """What the browser canvas sends: RGBA, transparent background, dark strokes, digit small and off-centre."""
    images, labels = mnist_test_sample
    for i in range(10):
        big = np.array(Image.fromarray(images[i]).resize((120, 120), Image.Resampling.BICUBIC))
        canvas = np.zeros((560, 560, 4), np.uint8)
        canvas[40:160, 380:500, 3] = big  # ink only in the alpha channel, colour black
        upload = png_bytes(canvas, "RGBA")
        assert digits_of(client.post("/predict", files={"file": ("c.png", upload, "image/png")})) == [labels[i]]


def test_return_input_shows_what_the_model_saw(client, mnist_test_sample) -> None:
    images, _ = mnist_test_sample
    body = client.post("/predict?return_input=true", json=pixels_json(images[3])).json()
    seen = np.array(body["predictions"][0]["input"])
    assert seen.shape == (28, 28) and np.array_equal(seen, images[3])
    plain = client.post("/predict", json=pixels_json(images[3])).json()
    assert "input" not in plain["predictions"][0]


def test_model_parameter_picks_the_model(client, mnist_test_sample) -> None:
    images, labels = mnist_test_sample
    body = client.post("/predict?model=mlp", json=pixels_json(images[:10])).json()
    assert body["model"] == "mlp"
    assert [p["digit"] for p in body["predictions"]] == labels[:10].tolist()


# --- other endpoints ---------------------------------------------------------------------------------------


def test_models_lists_each_model_with_metadata_and_accuracy(client) -> None:
    body = client.get("/models").json()
    assert body["default_model"] == "lenet5" and body["failed"] == {}
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"lenet5", "mlp"}
    assert by_name["lenet5"]["metrics"]["test_accuracy"] >= 0.992
    assert by_name["mlp"]["metrics"]["test_accuracy"] >= 0.983
    assert by_name["lenet5"]["labels"] == [str(i) for i in range(10)]
    assert by_name["lenet5"]["input"]["shape"] == ["N", 1, 28, 28]


def test_health_readiness_and_docs(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True, "models": {"lenet5": "ready", "mlp": "ready"}}
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert "PixelsRequest" in spec["components"]["schemas"]
    assert body["application/json"]["examples"]


def test_metrics_count_requests_batches_and_queue_time(client, mnist_test_sample) -> None:
    images, _ = mnist_test_sample
    client.post("/predict", json=pixels_json(images[:4]))
    client.post("/predict", content=b"nope", headers={"content-type": "text/plain"})
    text = client.get("/metrics").text
    assert 'digits_requests_total{method="POST",route="/predict",status="200"}' in text
    assert 'digits_requests_total{method="POST",route="/predict",status="415"}' in text
    for name in ["digits_request_seconds_bucket", "digits_queue_seconds_bucket", "digits_batch_size_bucket",
                 "digits_inference_seconds_bucket", "digits_pending_images"]:
        assert name in text, name


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,status,message",
    [
        ({"content": b"{broken", "headers": {"content-type": "application/json"}}, 422, "not valid JSON"),
        ({"json": {"pixels": [[0] * 27] * 28}}, 422, "28x28"),
        ({"json": {"pixels": [[0] * 28] * 28 + [[1]]}}, 422, "28x28"),
        ({"json": {"pixels": [[256] * 28] * 28}}, 422, "between 0 and 255"),
        ({"json": {"pixels": [[-1] * 28] * 28}}, 422, "between 0 and 255"),
        ({"json": {"pixels": [[["a"] * 28] * 28]}}, 422, ""),
        ({"json": {"pixels": []}}, 422, ""),
        ({"json": {"nothing": 1}}, 422, '"pixels"'),
        ({"json": [1, 2]}, 422, '"pixels"'),
        ({"json": {"pixels": [[0] * 28] * 28, "images": []}}, 422, "either"),
        ({"json": {"images": ["***"]}}, 422, "base64"),
        ({"json": {"images": "abc"}}, 422, "list of base64"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported content type"),
        ({"content": b"hello"}, 415, "unsupported content type"),
        ({"content": b"not an image", "headers": {"content-type": "image/png"}}, 422, "decode"),
        ({"files": {"other": ("a.png", b"x", "image/png")}}, 422, '"file"'),
    ],
)
def test_bad_input_gets_a_4xx_that_says_what_was_wrong(client, kwargs, status, message) -> None:
    response = client.post("/predict", **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert message in body["detail"] and re.fullmatch(r"[a-z_]+", body["error"]), body  # error: a code


def test_blank_image_is_refused_with_422(client) -> None:
    blank = png_bytes(np.full((280, 280), 255, np.uint8))
    response = client.post("/predict", files={"file": ("blank.png", blank, "image/png")})
    assert response.status_code == 422 and "no ink" in response.json()["detail"]


def test_second_bad_image_of_an_upload_is_named(client, mnist_test_sample) -> None:
    good = png_bytes(mnist_test_sample[0][0])
    response = client.post("/predict", files=[("file", ("a.png", good, "image/png")),
                                              ("file", ("b.png", b"garbage", "image/png"))])
    assert response.status_code == 422 and response.json()["detail"].startswith("image 2 of 2:")


def test_unknown_model_is_404_with_the_choices(client, mnist_test_sample) -> None:
    response = client.post("/predict?model=resnet", json=pixels_json(mnist_test_sample[0][0]))
    assert response.status_code == 404
    assert "lenet5" in response.json()["detail"] and "mlp" in response.json()["detail"]


def test_query_parameter_errors_are_422(client, mnist_test_sample) -> None:
    response = client.post("/predict?return_input=maybe", json=pixels_json(mnist_test_sample[0][0]))
    assert response.status_code == 422 and "return_input" in response.json()["detail"]


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height; the pixel data is a tiny zlib stream."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding(client) -> None:
    response = client.post("/predict", files={"file": ("bomb.png", _png_header_only(60000, 60000), "image/png")})
    assert response.status_code == 413
    assert "pixels" in response.json()["detail"]


def test_body_over_the_limit_is_413(models_dir: Path) -> None:
    app = create_app(Settings(models_dir=models_dir, max_body_bytes=10_000))
    with TestClient(app) as small:
        response = small.post("/predict", files={"file": ("big.png", b"\0" * 20_000, "image/png")})
        assert response.status_code == 413 and "10,000-byte limit" in response.json()["detail"]

        def chunks():  # no Content-Length: the limit is enforced while streaming
            for _ in range(5):
                yield b" " * 4000

        response = small.post("/predict", content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413


def test_too_many_images_is_413(models_dir: Path) -> None:
    app = create_app(Settings(models_dir=models_dir, max_images_per_request=3))
    with TestClient(app) as small:
        response = small.post("/predict", json={"pixels": [[[0] * 28] * 28] * 4})
        assert response.status_code == 413 and "limit is 3" in response.json()["detail"]
        files = [("file", (f"{i}.png", png_bytes(np.zeros((28, 28))), "image/png")) for i in range(5)]
        assert small.post("/predict", files=files).status_code == 413


def test_full_queue_is_503_with_retry_after(models_dir: Path) -> None:
    app = create_app(Settings(models_dir=models_dir, max_queue=2))
    with TestClient(app) as small:
        response = small.post("/predict", json={"pixels": [[[255] * 28] * 28] * 3})
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        assert "queued" in response.json()["detail"]


def test_waiting_past_the_request_timeout_is_504(models_dir: Path) -> None:
    app = create_app(Settings(models_dir=models_dir, request_timeout_s=1e-6))
    with TestClient(app) as impatient:
        response = impatient.post("/predict", json={"pixels": [[[255] * 28] * 28] * 64})
        assert response.status_code == 504 and "waited more than" in response.json()["detail"]


@pytest.mark.parametrize("timeout_s", [0.25, 10.0])
def test_waiting_for_a_busy_image_decoder_counts_against_the_request_timeout(
    models_dir: Path, mnist_test_sample, monkeypatch: pytest.MonkeyPatch, timeout_s: float
) -> None:
    decode = api._each_image

    def slow_decode(convert, blobs: list[bytes], max_pixels: int) -> list:
        time.sleep(0.5)  # as a huge upload would take
        return decode(convert, blobs, max_pixels)

    monkeypatch.setattr(api, "_each_image", slow_decode)
    images, labels = mnist_test_sample
    upload = {"file": ("digit.png", png_bytes(images[0]), "image/png")}
    app = create_app(Settings(models_dir=models_dir, decode_threads=1, decode_inline_pixels=0,
                              request_timeout_s=timeout_s))
    with TestClient(app) as one_decoder, ThreadPoolExecutor(2) as pool:
        first = pool.submit(one_decoder.post, "/predict", files=upload)
        time.sleep(0.1)  # the first upload holds the only decoder
        second = pool.submit(one_decoder.post, "/predict", files=upload)
        answers = [first.result(timeout=30), second.result(timeout=30)]
    if timeout_s > 1:  # time enough: both are decoded in turn and predicted
        assert [a.status_code for a in answers] == [200, 200]
        assert [a.json()["predictions"][0]["digit"] for a in answers] == [int(labels[0])] * 2
    else:  # the second waited for the decoder past the timeout; the first's decoding outlasted it
        assert [a.status_code for a in answers] == [504, 504]
        assert "to have its images decoded" in answers[1].json()["detail"]


def test_small_pngs_are_decoded_on_the_event_loop_and_the_rest_in_threads(
    models_dir: Path, mnist_test_sample, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where each upload is preprocessed: the small PNGs of a request (by their headers, at most
    decode_inline_pixels in all) on the event loop, anything larger and any other format in a thread."""
    where: list[str] = []
    preprocess = imaging.preprocess_image_bytes

    def recording(data: bytes, *, max_pixels: int) -> np.ndarray:
        try:
            asyncio.get_running_loop()
            where.append("loop")
        except RuntimeError:
            where.append("thread")
        return preprocess(data, max_pixels=max_pixels)

    monkeypatch.setattr(imaging, "preprocess_image_bytes", recording)
    images, labels = mnist_test_sample
    small = png_bytes(images[0])  # 28x28
    big = png_bytes(np.kron(images[0], np.ones((20, 20), np.uint8)))  # 560x560: over 250,000 pixels
    jpeg = next(handwriting.photos(images, labels, 1, seed=3)).data
    app = create_app(Settings(models_dir=models_dir, decode_inline_pixels=250_000))
    with TestClient(app) as client:
        for files, expected in (
            ([small, small], ["loop", "loop"]),
            ([big], ["thread"]),
            ([jpeg], ["thread"]),
            ([small, jpeg], ["thread", "thread"]),
        ):
            where.clear()
            uploads = [("file", (f"{i}", data, "image/*")) for i, data in enumerate(files)]
            response = client.post("/predict", files=uploads)
            assert response.status_code == 200, response.text
            assert where == expected, files
        assert response.json()["predictions"][0]["digit"] == int(labels[0])
    assert api._decode_inline([small] * 300, 250_000) is True  # 235,200 pixels
    assert api._decode_inline([small] * 320, 250_000) is False
    assert api._decode_inline([small], 0) is False
    assert api._decode_inline([b"not an image"], 250_000) is False


def test_a_corrupt_model_is_reported_by_readyz_and_the_other_keeps_serving(
    models_dir: Path, tmp_path: Path, mnist_test_sample
) -> None:
    for f in models_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    with open(tmp_path / "mlp.onnx", "r+b") as f:  # flip bytes in the middle of the file
        f.seek(1000)
        f.write(b"\xff" * 16)
    app = create_app(Settings(models_dir=tmp_path))
    with TestClient(app) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert "SHA-256" in ready.json()["models"]["mlp"] and ready.json()["models"]["lenet5"] == "ready"
        assert c.get("/models").json()["failed"]["mlp"]
        images, labels = mnist_test_sample
        assert digits_of(c.post("/predict", json=pixels_json(images[0]))) == [labels[0]]
        response = c.post("/predict?model=mlp", json=pixels_json(images[0]))
        assert response.status_code == 503 and "failed to load" in response.json()["detail"]


def test_a_model_with_the_wrong_contract_is_refused(models_dir: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["logits"]), helper.make_node("Identity", ["x"], ["probabilities"])],
        "wrong", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "wrong.onnx")
    from training.export import sha256_of

    (tmp_path / "manifest.json").write_text(json.dumps(
        {"default_model": "wrong", "models": [{"name": "wrong", "file": "wrong.onnx",
                                               "sha256": sha256_of(tmp_path / "wrong.onnx")}]}))
    with TestClient(create_app(Settings(models_dir=tmp_path))) as c:
        body = c.get("/readyz").json()
        assert not body["ready"] and "expected one float32 input named 'pixels'" in body["models"]["wrong"]


def test_settings_come_from_digits_environment_variables(monkeypatch, models_dir: Path) -> None:
    monkeypatch.setenv("DIGITS_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("DIGITS_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("DIGITS_MAX_DELAY_MS", "2.5")
    settings = Settings()
    assert settings.max_batch_size == 8 and settings.max_delay_ms == 2.5 and settings.models_dir == models_dir
    monkeypatch.setenv("DIGITS_MAX_BATCH_SIZE", "0")
    with pytest.raises(ValueError, match="max_batch_size"):
        Settings()


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (3, 2), (5, 4), (64, 4)])
def test_decode_threads_follow_the_cores(cores: int, threads: int) -> None:
    """One fewer decoding thread than cores (the event loop keeps one), at least 1, at most 4."""
    from service.settings import default_decode_threads

    assert default_decode_threads(cores) == threads
