"""The models shipped in models/: checksums, contract, metadata and accuracy, checked with ONNX Runtime alone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from testkit.data import load_mnist

REQUIRED_ACCURACY = {"lenet5": 0.992, "mlp": 0.983}


def manifest(models_dir: Path) -> dict:
    return json.loads((models_dir / "manifest.json").read_text())


def accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = images.astype(np.float32).reshape(-1, 1, 28, 28)  # raw 0..255, no normalisation
    probabilities = session.run(["probabilities"], {"pixels": x})[0]
    return float(np.mean(probabilities.argmax(1) == labels))


def test_manifest_lists_both_models_with_matching_checksums(models_dir: Path) -> None:
    doc = manifest(models_dir)
    assert doc["default_model"] == "lenet5"
    entries = {m["name"]: m for m in doc["models"]}
    assert set(entries) == set(REQUIRED_ACCURACY)
    for name, entry in entries.items():
        path = models_dir / entry["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], name
        assert entry["input"]["name"] == "pixels" and entry["input"]["shape"] == ["N", 1, 28, 28]
        assert entry["metrics"]["test_images"] == 10000
        assert entry["metrics"]["test_accuracy"] >= REQUIRED_ACCURACY[name]
        assert entry["dataset"] == "mnist" and entry["train_data_sha256"].startswith("sha256:")
        assert path.stat().st_size < 5_000_000, "shipped models stay small"


@pytest.mark.parametrize("name", sorted(REQUIRED_ACCURACY))
def test_metadata_travels_inside_the_onnx_file(models_dir: Path, name: str) -> None:
    session = ort.InferenceSession(str(models_dir / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["name"] == name and meta["architecture"] == name
    assert json.loads(meta["labels"]) == [str(i) for i in range(10)]
    assert json.loads(meta["input_spec"])["range"] == [0, 255]
    assert meta["training_command"].startswith("digits train --model " + name)
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]


@pytest.mark.parametrize("name", sorted(REQUIRED_ACCURACY))
def test_accuracy_on_the_shipped_test_sample(models_dir: Path, mnist_test_sample, name: str) -> None:
    images, labels = mnist_test_sample
    assert accuracy(models_dir / f"{name}.onnx", images, labels) >= 0.98


@pytest.mark.full_data
@pytest.mark.parametrize("name", sorted(REQUIRED_ACCURACY))
def test_accuracy_on_the_official_10000_test_images(models_dir: Path, full_mnist_dir: Path, name: str) -> None:
    images, labels = load_mnist(full_mnist_dir, "test")
    assert len(images) == 10000
    measured = accuracy(models_dir / f"{name}.onnx", images, labels)
    assert measured >= REQUIRED_ACCURACY[name]
    recorded = manifest(models_dir)["models"]
    assert measured == pytest.approx(next(m for m in recorded if m["name"] == name)["metrics"]["test_accuracy"],
                                     abs=1e-4)
