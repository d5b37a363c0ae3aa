"""Hot reload: the model-repository endpoints and SIGHUP swap in a verified new file, refuse a bad one
while the old version keeps serving, and lose no request while they do it."""

from __future__ import annotations

import concurrent.futures
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from testkit.live_server import LiveServer, install_model, wait_until
from tests.helpers import shipped_version

KEY = "reload-test-key"
AUTH = {"X-API-Key": KEY}


SHIPPED = shipped_version("lenet5")
NEXT = str(int(SHIPPED) + 1)  # the version a test installs over it


def sha_of(client: TestClient | httpx.Client, name: str) -> str:
    (model,) = [m for m in client.get("/models").json()["models"] if m["name"] == name]
    return str(model["sha256"])


def onnx_bytes(*, input_name: str = "pixels", fail_at_runtime: bool = False) -> bytes:
    """A small ONNX graph that breaks the serving contract: a wrong input name, or a Reshape to
    [-1, 10] that fails when run (784 values do not split into rows of 10)."""
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 1, 28, 28])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 10]) for n in ("logits", "probabilities")]
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 10 if fail_at_runtime else 784])
    nodes = [helper.make_node("Reshape", [input_name, "shape"], ["flat"])]
    if fail_at_runtime:
        nodes.append(helper.make_node("Identity", ["flat"], ["logits"]))
    else:
        weights = helper.make_tensor("w", TensorProto.FLOAT, [784, 10], np.zeros(7840, np.float32).tolist())
        nodes.append(helper.make_node("MatMul", ["flat", "w"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
    initializers = [shape] if fail_at_runtime else [shape, weights]
    graph = helper.make_graph(nodes, "bad", [inp], outs, initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


@pytest.fixture
def models_copy(models_dir: Path, tmp_path: Path) -> Path:
    """A copy of the shipped models/ that a test may change."""
    folder = tmp_path / "models"
    shutil.copytree(models_dir, folder)
    return folder


@pytest.fixture(scope="module")
def both_right(mnist_test_sample) -> tuple[np.ndarray, np.ndarray]:
    """Real test digits that both shipped models read right (so answers stay right across a swap)."""
    from service.runtime import load_model

    images, labels = mnist_test_sample
    x = images[:200, None].astype(np.float32)
    root = Path(__file__).resolve().parents[1] / "models"
    right = np.ones(len(x), bool)
    for name in ("lenet5", "mlp"):
        right &= load_model(root / f"{name}.onnx", warmup_batch_sizes=()).run(x)[1].argmax(1) == labels[:200]
    return images[:200][right][:64], labels[:200][right][:64]


@pytest.fixture
def managed(models_copy: Path) -> Iterator[TestClient]:
    app = create_app(Settings(models_dir=models_copy, api_key=KEY))
    with TestClient(app) as client:
        yield client


def predicted(client: TestClient | httpx.Client, images: np.ndarray, model: str | None = None) -> list[int]:
    response = client.post("/predict" + (f"?model={model}" if model else ""), headers=AUTH,
                           json={"pixels": images.tolist()})
    assert response.status_code == 200, response.text
    return [p["digit"] for p in response.json()["predictions"]]


# --- the repository endpoints ------------------------------------------------------------------------------


def test_loading_a_new_valid_file_swaps_it_in(managed, models_copy, both_right) -> None:
    images, labels = both_right
    old = sha_of(managed, "lenet5")
    new = install_model(models_copy, "lenet5", (models_copy / "mlp.onnx").read_bytes(), version=NEXT)
    assert sha_of(managed, "lenet5") == old  # nothing changes until asked
    response = managed.post("/v2/repository/models/lenet5/load", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "lenet5", "version": NEXT, "sha256": new, "state": "READY"}
    (model,) = [m for m in managed.get("/models").json()["models"] if m["name"] == "lenet5"]
    assert model["sha256"] == new and model["architecture"] == "mlp" and model["version"] == NEXT
    assert managed.get("/v2/models/lenet5").json()["versions"] == [NEXT]
    answer = managed.post("/predict", headers=AUTH, json={"pixels": images.tolist()}).json()
    assert answer["version"] == NEXT and [p["digit"] for p in answer["predictions"]] == labels.tolist()
    assert managed.get("/readyz").status_code == 200


@pytest.mark.parametrize("fault,message", [
    ("checksum", "SHA-256 is"),
    ("garbage", "ONNX Runtime cannot load it"),
    ("empty", "ONNX Runtime cannot load it"),
    ("contract", "expected one float32 input named 'pixels'"),
    ("fails_at_warmup", "the model fails when run"),
    ("missing", "not found"),
])
def test_a_bad_file_is_refused_with_400_and_the_old_model_keeps_serving(
    managed, models_copy, both_right, fault, message
) -> None:
    images, labels = both_right
    old = sha_of(managed, "lenet5")
    if fault == "checksum":  # the file changed, the manifest did not
        install_model(models_copy, "lenet5", (models_copy / "mlp.onnx").read_bytes(), update_manifest=False)
    elif fault == "missing":
        (models_copy / "lenet5.onnx").unlink()
    else:  # the manifest matches the file, which is no servable model
        blob = {"garbage": b"\x08\x01not an onnx model" * 64, "empty": b"",
                "contract": onnx_bytes(input_name="x"), "fails_at_warmup": onnx_bytes(fail_at_runtime=True)}[fault]
        install_model(models_copy, "lenet5", blob, version=NEXT)
    response = managed.post("/v2/repository/models/lenet5/load", headers=AUTH)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert message in detail and "lenet5" in detail and "the loaded version keeps serving" in detail
    assert sha_of(managed, "lenet5") == old
    answer = managed.post("/predict", headers=AUTH, json={"pixels": images.tolist()}).json()
    assert answer["version"] == SHIPPED and [p["digit"] for p in answer["predictions"]] == labels.tolist()
    assert managed.get("/readyz").status_code == 200


@pytest.mark.parametrize("manifest,status,message", [
    ("{not json", 400, "is not valid JSON"),
    ("[1, 2]", 400, "is not a manifest"),
    ('{"models": [{"name": "lenet5"}]}', 400, "lacks the field"),
    ('{"models": [{"name": "mlp", "file": "mlp.onnx", "sha256": "0"}]}', 404, "is not in"),
])
def test_a_broken_manifest_is_refused_and_the_old_model_keeps_serving(
    managed, models_copy, both_right, manifest, status, message
) -> None:
    images, labels = both_right
    old = sha_of(managed, "lenet5")
    (models_copy / "manifest.json").write_text(manifest)
    response = managed.post("/v2/repository/models/lenet5/load", headers=AUTH)
    assert response.status_code == status and message in response.json()["detail"], response.text
    assert sha_of(managed, "lenet5") == old and predicted(managed, images) == labels.tolist()


def test_unload_then_the_model_is_gone_until_loaded_again(managed, both_right) -> None:
    images, labels = both_right
    assert managed.post("/v2/repository/models/mlp/unload", headers=AUTH).json() == {
        "name": "mlp", "state": "UNAVAILABLE"}
    response = managed.post("/predict?model=mlp", headers=AUTH, json={"pixels": images[0].tolist()})
    assert response.status_code == 404 and "available models: lenet5" in response.json()["detail"]
    assert managed.post("/v2/models/mlp/infer", headers=AUTH, json={"inputs": []}).status_code == 404
    assert managed.get("/v2/models/mlp/ready").status_code == 503
    assert [m["name"] for m in managed.get("/models").json()["models"]] == ["lenet5"]
    index = {m["name"]: m for m in managed.post("/v2/repository/index", headers=AUTH).json()}
    assert index["mlp"]["state"] == "UNAVAILABLE" and index["mlp"]["reason"] == "unloaded"
    assert index["lenet5"]["state"] == "READY"
    assert predicted(managed, images) == labels.tolist()  # the other model is untouched
    again = managed.post("/v2/repository/models/mlp/unload", headers=AUTH)
    assert again.status_code == 404 and "not loaded" in again.json()["detail"]
    assert managed.post("/v2/repository/models/mlp/load", headers=AUTH).json()["state"] == "READY"
    assert predicted(managed, images, "mlp") == labels.tolist()


def test_unloading_the_default_model_makes_the_service_not_ready(managed, both_right) -> None:
    assert managed.post("/v2/repository/models/lenet5/unload", headers=AUTH).status_code == 200
    assert managed.get("/readyz").status_code == 503 and managed.get("/v2/health/ready").status_code == 503
    assert managed.post("/predict", headers=AUTH, json={"pixels": both_right[0][0].tolist()}).status_code == 404
    assert managed.post("/v2/repository/models/lenet5/load", headers=AUTH).status_code == 200
    assert managed.get("/readyz").status_code == 200


def test_unknown_models_are_404(managed) -> None:
    for path in ("/v2/repository/models/resnet/load", "/v2/repository/models/resnet/unload"):
        response = managed.post(path, headers=AUTH)
        assert response.status_code == 404 and "resnet" in response.json()["detail"]


def test_requests_queued_during_a_swap_finish_on_the_model_they_started_with(models_copy, both_right) -> None:
    images, labels = both_right
    # A long batching delay holds the first request in the old model's queue while the swap happens.
    app = create_app(Settings(models_dir=models_copy, api_key=KEY, max_delay_ms=2000, max_batch_size=256))
    with TestClient(app) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        queued = pool.submit(client.post, "/predict", headers=AUTH, json={"pixels": images[:8].tolist()})
        assert wait_until(lambda: app.state.registry.served["lenet5"].batcher.pending == 8, timeout_s=10)
        install_model(models_copy, "lenet5", (models_copy / "mlp.onnx").read_bytes(), version=NEXT)
        assert not queued.done()
        swap = client.post("/v2/repository/models/lenet5/load", headers=AUTH)  # returns once the old drained
        assert swap.status_code == 200
        first = queued.result(timeout=10).json()
        assert first["version"] == SHIPPED and [p["digit"] for p in first["predictions"]] == labels[:8].tolist()
        answer = client.post("/predict", headers=AUTH, json={"pixels": images[:8].tolist()}).json()
        assert answer["version"] == NEXT and [p["digit"] for p in answer["predictions"]] == labels[:8].tolist()


# --- a live process ----------------------------------------------------------------------------------------


def test_sighup_reloads_every_model_from_disk(models_dir, models_copy, both_right) -> None:
    images, labels = both_right
    with LiveServer(models_copy) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        old, mlp_before = sha_of(http, "lenet5"), sha_of(http, "mlp")
        new = install_model(models_copy, "lenet5", (models_dir / "mlp.onnx").read_bytes(), version=NEXT)
        install_model(models_copy, "mlp", b"\x08\x01corrupt" * 32)  # refused: mlp keeps its old version
        assert sha_of(http, "lenet5") == old  # nothing changes until the signal
        server.signal(signal.SIGHUP)
        assert wait_until(lambda: sha_of(http, "lenet5") == new, timeout_s=30), server.log()
        assert wait_until(lambda: "reload of mlp rejected" in server.log(), timeout_s=30), server.log()
        assert sha_of(http, "mlp") == mlp_before
        answer = http.post("/predict", json={"pixels": images.tolist()}).json()
        assert answer["version"] == NEXT and [p["digit"] for p in answer["predictions"]] == labels.tolist()
        assert predicted(http, images, "mlp") == labels.tolist()
        assert http.get("/readyz").status_code == 200 and server.proc is not None and server.proc.poll() is None


def test_reloads_under_steady_load_lose_no_request(models_dir, models_copy, both_right) -> None:
    """8 clients for about 4 s while lenet5 is swapped 5 times (between two real models) and one
    corrupt file is refused: every request gets a right answer."""
    images, labels = both_right
    blobs = [(models_dir / "mlp.onnx").read_bytes(), (models_dir / "lenet5.onnx").read_bytes()]
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    lock = threading.Lock()

    def client_loop(url: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=url, timeout=30, headers=AUTH) as http:
            while not stop.is_set():
                i = rng.integers(0, len(images), size=int(rng.integers(1, 5)))
                try:
                    response = http.post("/predict", json={"pixels": images[i].tolist()})
                    body = response.json() if response.status_code == 200 else {}
                    right = [p["digit"] for p in body.get("predictions", [])] == labels[i].tolist()
                    outcome = "right" if right else f"{response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                with lock:
                    outcomes[outcome] += 1
                    if outcome == "right":
                        versions[body["version"]] += 1

    loads: list[tuple[int, str]] = []
    with LiveServer(models_copy, env={"DIGITS_API_KEY": KEY}) as server:
        threads = [threading.Thread(target=client_loop, args=(server.url, seed)) for seed in range(8)]
        for t in threads:
            t.start()
        try:
            with httpx.Client(base_url=server.url, timeout=60, headers=AUTH) as admin:
                deadline = time.monotonic() + 4.0
                for n in range(6):
                    time.sleep(max(0.0, (deadline - time.monotonic()) / (6 - n) / 2))
                    if n == 3:  # the corrupt file: refused, the serving version stays
                        install_model(models_copy, "lenet5", b"\x08\x01corrupt" * 32, version="bad")
                    else:
                        install_model(models_copy, "lenet5", blobs[n % 2], version=str(n + 10))
                    response = admin.post("/v2/repository/models/lenet5/load")
                    loads.append((response.status_code, response.json().get("version", "")))
                time.sleep(max(0.0, deadline - time.monotonic()))
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        assert server.proc is not None and server.proc.poll() is None
    assert [status for status, _ in loads] == [200, 200, 200, 400, 200, 200], loads
    assert set(outcomes) == {"right"}, outcomes.most_common(5)
    assert outcomes["right"] >= 40 and len(versions) >= 3, (outcomes, versions)
