"""`digits train` and `digits export` end to end on the real MNIST sample shipped under tests/data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import cli  # noqa: E402
from core.kaggle import write_kaggle_csv  # noqa: E402
from testkit.data import load_sample  # noqa: E402
from training import export  # noqa: E402
from training.data import stratified_split  # noqa: E402

SAMPLE = Path(__file__).parent / "data" / "mnist-sample"


def train(out: Path, *extra: str) -> dict:
    argv = ["train", "--data-dir", str(SAMPLE), "--no-verify", "--out", str(out), "--quiet", *extra]
    assert cli.main(argv) == 0
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three epochs of LeNet-5 on the 2,000-image sample: a real, if weak, model."""
    out = tmp_path_factory.mktemp("run")
    train(out, "--model", "lenet5", "--epochs", "3", "--lr", "0.005", "--val-fraction", "0.1", "--seed", "3")
    return out


def test_run_directory_holds_everything_a_user_needs(short_run: Path) -> None:
    for name in ["config.json", "metrics.csv", "metrics.json", "curves.png", "confusion.png", "best.pt", "last.pt",
                 "results.json", "lenet5.onnx", "train.log"]:
        assert (short_run / name).is_file(), name
    history = json.loads((short_run / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr"} <= set(history[0])
    assert (short_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((short_run / "results.json").read_text())
    assert results["test_images"] == 1000
    assert results["test_accuracy"] > 0.7  # three epochs on 1,800 images
    config = json.loads((short_run / "config.json").read_text())
    assert config["model"] == "lenet5" and config["command"].startswith("digits train")


def test_exported_onnx_honours_the_serving_contract(short_run: Path) -> None:
    model = onnx.load(str(short_run / "lenet5.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert not list((short_run).glob("*.onnx.data")), "weights must be inside the .onnx file"
    (inp,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "pixels" and isinstance(dims[0], str) and dims[1:] == [1, 28, 28]
    assert [o.name for o in model.graph.output] == ["logits", "probabilities"]
    meta = {p.key: p.value for p in model.metadata_props}
    for key in ["name", "version", "architecture", "model_args", "dataset", "train_data_sha256", "metrics",
                "input_spec", "labels", "created", "training_command"]:
        assert meta.get(key), key
    assert json.loads(meta["labels"]) == [str(i) for i in range(10)]
    assert json.loads(meta["metrics"])["test_accuracy"] > 0.7
    assert meta["train_data_sha256"].startswith("sha256:")

    session = ort.InferenceSession(str(short_run / "lenet5.onnx"))
    for n in (1, 7, 300):  # dynamic batch
        logits, probs = session.run(None, {"pixels": np.zeros((n, 1, 28, 28), np.float32)})
        assert logits.shape == probs.shape == (n, 10)
        assert np.allclose(probs.sum(1), 1, atol=1e-5)


def test_onnx_runtime_matches_pytorch_on_1000_real_test_images(short_run: Path) -> None:
    net, _ = export.load_checkpoint(short_run)
    images, _ = load_sample("test")
    report = export.check_parity(net, short_run / "lenet5.onnx", images[:1000])
    assert report.images == 1000
    assert report.argmax_agreement == 1.0
    assert report.max_prob_diff <= 1e-4


def test_training_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    args = ("--model", "mlp", "--hidden", "64", "--epochs", "1", "--seed", "5", "--patience", "0")
    a = train(tmp_path / "a", *args)
    b = train(tmp_path / "b", *args)
    assert a["test_accuracy"] == b["test_accuracy"]
    wa = torch.load(tmp_path / "a" / "best.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "b" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_continues_where_the_run_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training import train as train_module

    common = ("--model", "mlp", "--hidden", "32", "--seed", "1", "--patience", "0", "--epochs", "2")
    train(tmp_path / "full", *common)
    # Interrupt the second run during its second epoch (after epoch 1's checkpoint was written).
    real_evaluate, calls = train_module.evaluate, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "part", *common)
    monkeypatch.undo()
    train(tmp_path / "part", *common, "--resume", str(tmp_path / "part" / "last.pt"))
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    part = json.loads((tmp_path / "part" / "metrics.json").read_text())
    assert [r["epoch"] for r in part] == [1, 2]
    # The resumed run ends with the same weights as the uninterrupted one.
    assert part[-1]["train_loss"] == pytest.approx(full[-1]["train_loss"], rel=1e-6)
    wa = torch.load(tmp_path / "full" / "last.pt", weights_only=False)["model"]
    wb = torch.load(tmp_path / "part" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_dry_run_produces_a_loadable_model_for_each_architecture(tmp_path: Path) -> None:
    for arch in ("mlp", "lenet5"):
        results = train(tmp_path / arch, "--model", arch, "--dry-run", "--augment", "--augment-strokes",
                        "--optimizer", "nesterov",
                        "--lr", "0.01", "--schedule", "cosine")
        assert results["parity"]["argmax_agreement"] == 1.0
        session = ort.InferenceSession(str(tmp_path / arch / f"{arch}.onnx"))
        assert session.get_inputs()[0].name == "pixels"


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adagrad", "rmsprop", "adamw"])
def test_every_optimizer_trains(tmp_path: Path, optimizer: str) -> None:
    results = train(tmp_path, "--model", "mlp", "--hidden", "32", "--dry-run", "--optimizer", optimizer,
                    "--schedule", "step", "--lr", "0.01")
    assert 0.0 <= results["test_accuracy"] <= 1.0


def test_kaggle_csv_training_writes_a_valid_model_and_submission(tmp_path: Path) -> None:
    images, labels = load_sample("train")
    test_images, _ = load_sample("test")
    write_kaggle_csv(tmp_path / "train.csv", images, labels)
    write_kaggle_csv(tmp_path / "test.csv", test_images[:100])
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "kaggle", "--csv", str(tmp_path / "train.csv"), "--test-csv",
                     str(tmp_path / "test.csv"), "--model", "mlp", "--epochs", "3", "--lr", "0.005", "--out", str(out),
                     "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    _, held_out = stratified_split(labels, 0.1, 1)  # --test-fraction 0.1 with seed 0 + 1
    assert results["test_images"] == len(held_out)
    assert results["test_accuracy"] > 0.7
    lines = (out / "submission.csv").read_text().splitlines()
    assert lines[0] == "ImageId,Label" and len(lines) == 101
    assert [int(line.split(",")[0]) for line in lines[1:]] == list(range(1, 101))
    meta = {p.key: p.value for p in onnx.load(str(out / "mlp.onnx")).metadata_props}
    assert meta["dataset"] == "kaggle:train.csv"


def test_export_command_writes_model_and_manifest(short_run: Path, tmp_path: Path, capsys) -> None:
    from training.model_table import BEGIN, END

    manifest = tmp_path / "models" / "manifest.json"
    out = tmp_path / "models" / "digits.onnx"
    readme = tmp_path / "README.md"
    readme.write_text(f"# Models\n{BEGIN}\n{END}\n")
    assert cli.main(["export", str(short_run), "--out", str(out), "--name", "digits", "--version", "3",
                     "--manifest", str(manifest), "--parity-data", str(SAMPLE), "--readme", str(readme)]) == 0
    assert "argmax agreement 100.00%" in capsys.readouterr().out
    assert "| `digits` (default) | LeNet-5, ReLU, max pooling" in readme.read_text()
    doc = json.loads(manifest.read_text())
    (entry,) = doc["models"]
    assert doc["default_model"] == "digits"
    assert entry["file"] == "digits.onnx" and entry["version"] == "3"
    assert entry["sha256"] == export.sha256_of(out)
    assert entry["input"]["shape"] == ["N", 1, 28, 28] and entry["metrics"]["test_accuracy"] > 0.7
    # No trace of the machine that exported it: the exporter's stack traces name its source files.
    assert str(Path(cli.__file__).resolve().parent).encode() not in out.read_bytes()
    assert b"stack_trace" not in out.read_bytes()


def test_missing_data_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="kaggle needs --csv"):
        cli.main(["train", "--dataset", "kaggle", "--out", str(tmp_path)])


def test_stroke_augmentation_lifts_thickens_and_blurs_real_digits(monkeypatch: pytest.MonkeyPatch) -> None:
    """--augment-strokes on real digits: a seed repeats it; with one distortion forced at a
    time, ink is erased along a band (a lifted stroke), or the pen is broader."""
    from training import train as train_module

    images, _ = load_sample("test")
    x = torch.from_numpy(images[:64].astype(np.float32)).unsqueeze(1)
    first = train_module.augment_strokes(x, torch.Generator().manual_seed(5))
    again = train_module.augment_strokes(x, torch.Generator().manual_seed(5))
    assert first.shape == x.shape and torch.equal(first, again)
    assert float(first.min()) >= 0.0 and float(first.max()) <= 255.0

    def forced(lifted: float, thicker: float) -> torch.Tensor:
        monkeypatch.setattr(train_module, "LIFTED_FRACTION", lifted)
        monkeypatch.setattr(train_module, "THICKER_FRACTION", thicker)
        monkeypatch.setattr(train_module, "BLURRED_FRACTION", 0.0)
        return train_module.augment_strokes(x, torch.Generator().manual_seed(5))

    out = forced(lifted=1.0, thicker=0.0)
    assert bool((out <= x + 1e-4).all())  # only erased, never drawn
    erased = ((x > 128) & (out < 32)).flatten(1).sum(1)
    assert int((erased > 0).sum()) >= 56  # nearly every digit loses some ink along its band
    out = forced(lifted=0.0, thicker=1.0)
    assert bool(((out > 128).flatten(1).sum(1) > (x > 128).flatten(1).sum(1)).all())  # a broader pen
