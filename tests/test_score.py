"""`digits score` in local mode on real MNIST digits: every input kind, the outputs, bad inputs, atomicity.

The reference for every prediction is the service itself (the shipped models behind the real
app): the scorer must give the same digit for the same image, whichever way it arrives.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cli
from clients import sources
from clients.pipeline import Prefetcher, ordered_map
from clients.sources import ReadOptions, iter_batches, plan_inputs
from core.idx import write_idx
from core.kaggle import write_kaggle_csv, write_kaggle_submission
from testkit.data import SAMPLE_DIR
from tests.conftest import REPO, Score

IDX_IMAGES = SAMPLE_DIR / "t10k-images-idx3-ubyte.gz"
IDX_LABELS = SAMPLE_DIR / "t10k-labels-idx1-ubyte.gz"




def service_digits(client, images: np.ndarray) -> list[int]:
    """The service's answers for MNIST-style uint8 [N,28,28] images, in chunks it accepts."""
    digits: list[int] = []
    for start in range(0, len(images), 200):
        response = client.post("/predict", json={"pixels": images[start : start + 200].tolist()})
        assert response.status_code == 200, response.text
        digits += [p["digit"] for p in response.json()["predictions"]]
    return digits


def service_file_digits(client, paths: list[Path]) -> list[int]:
    """The service's answers for image files uploaded as they are."""
    digits: list[int] = []
    for start in range(0, len(paths), 64):
        files = [("file", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths[start : start + 64]]
        response = client.post("/predict", files=files)
        assert response.status_code == 200, response.text
        digits += [p["digit"] for p in response.json()["predictions"]]
    return digits


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_digit_files(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Real MNIST digits as users have them: PNG and JPEG, dark ink on white paper or white on black,
    upscaled, in nested folders named after the digit."""
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        picture = Image.fromarray(255 - image if i % 2 else image).resize((84, 84), Image.Resampling.BICUBIC)
        folder = root / str(label) / ("scans" if i % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:03d}.{'jpg' if i % 4 == 1 else 'png'}"
        picture.save(path, quality=95)


def write_pngs(folder: Path, images: np.ndarray) -> Path:
    """MNIST digits as small PNG files 00.png, 01.png, ... in a new folder."""
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    return folder


# --- image files ---------------------------------------------------------------------------------


def test_image_folders_and_globs_give_the_service_s_digits(
    tmp_path: Path, score: Score, client, mnist_test_sample
) -> None:
    images, labels = mnist_test_sample
    root = tmp_path / "digits"
    write_digit_files(root, images[:60], labels[:60])
    extra = tmp_path / "more"
    extra.mkdir()
    for i in range(60, 70):
        Image.fromarray(255 - images[i]).save(extra / f"x{i}.png")
    out = tmp_path / "predictions.csv"

    code, stdout, stderr = score(str(root), str(extra / "*.png"), "--folder-labels", "--jobs", "2",
                                 "--out", str(out))

    assert code == 0, stderr
    rows = read_csv_rows(out)
    names = [row["input"] for row in rows]
    walked = sorted(str(p) for p in root.rglob("*") if p.is_file())
    globbed = sorted(str(p) for p in extra.glob("*.png"))
    assert sorted(names[:60]) == walked and names[60:] == globbed and len(names) == 70
    # folders walked in sorted order, depth first: digits/0/000.png ... digits/0/scans/... digits/1/...
    assert names[:60] == _walk_order(root)
    expected = service_file_digits(client, [Path(n) for n in names])
    assert [int(row["digit"]) for row in rows] == expected
    assert [row["label"] for row in rows] == [str(d) for d in expected]
    # --folder-labels: the first 60 have a true label from their folder, the 10 in more/ have none
    truth = [int(Path(n).parts[len(root.parts)]) for n in names[:60]]
    assert [int(row["expected"]) for row in rows[:60]] == truth
    assert all(row["expected"] == "" for row in rows[60:])
    correct = sum(d == t for d, t in zip(expected, truth, strict=False))
    assert f"accuracy: {correct / 60:.4%} ({correct}/60)" in stdout
    assert "60 of the 70 scored images have a label" in stdout
    assert correct >= 57  # real digits, the shipped model
    assert "scored 70 images" in stderr


def _walk_order(root: Path) -> list[str]:
    found = []
    for folder, subdirs, files in os.walk(root):
        subdirs.sort()
        found += [os.path.join(folder, f) for f in sorted(files)]
    return found


# --- IDX -----------------------------------------------------------------------------------------


def test_idx_with_labels_prints_the_service_s_accuracy(
    tmp_path: Path, score: Score, client, mnist_test_sample
) -> None:
    images, labels = mnist_test_sample
    out = tmp_path / "idx.jsonl"

    code, stdout, stderr = score(str(IDX_IMAGES), "--labels", str(IDX_LABELS), "--out", str(out),
                                 "--batch-size", "300")

    assert code == 0, stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = service_digits(client, images)
    assert [row["digit"] for row in rows] == expected
    assert [row["input"] for row in rows] == [f"{IDX_IMAGES}[{i}]" for i in range(1000)]
    assert [row["expected"] for row in rows] == labels.tolist()
    assert all(len(row["probabilities"]) == 10 and row["confidence"] == max(row["probabilities"]) for row in rows)
    correct = int(np.sum(np.array(expected) == labels))
    assert f"accuracy: {correct / 1000:.4%} ({correct}/1000)" in stdout
    assert correct >= 970
    for heading in ("precision", "recall", "confusion matrix"):
        assert heading in stdout


def test_raw_idx_and_gzip_idx_score_the_same(tmp_path: Path, score: Score) -> None:
    raw = tmp_path / "t10k-images-idx3-ubyte"
    raw.write_bytes(gzip.decompress(IDX_IMAGES.read_bytes()))
    code_gz, from_gz, _ = score(str(IDX_IMAGES), "--format", "kaggle")
    code_raw, from_raw, _ = score(str(raw), "--format", "kaggle")
    assert code_gz == code_raw == 0
    assert from_gz == from_raw and from_gz.count("\n") == 1001


def test_idx_images_are_read_a_batch_at_a_time(tmp_path: Path) -> None:
    """A million images (784 MB once decompressed) must never be held at once."""
    big = tmp_path / "million-idx3-ubyte.gz"
    header = bytes.fromhex("00000803") + (1_000_000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    block = gzip.compress(bytes(784 * 10_000), compresslevel=1)  # gzip members may be concatenated
    big.write_bytes(gzip.compress(header) + block * 100)
    plan = plan_inputs([str(big)])
    assert plan.total == 1_000_000
    tracemalloc.start()
    try:
        batches = iter_batches(plan.sources, ReadOptions(batch_size=1024, jobs=0))
        firsts = [next(batches) for _ in range(3)]
        batches.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [len(b) for b in firsts] == [1024] * 3
    assert firsts[2].positions[0] == 2049
    assert peak < 30 * 2**20


# --- Kaggle CSV ----------------------------------------------------------------------------------


def test_kaggle_test_csv_gives_the_exact_submission(
    tmp_path: Path, score: Score, client, mnist_test_sample
) -> None:
    images, _ = mnist_test_sample
    test_csv = tmp_path / "test.csv"
    write_kaggle_csv(test_csv, images[:500])
    reference = tmp_path / "reference.csv"
    write_kaggle_submission(reference, service_digits(client, images[:500]))
    out = tmp_path / "submission.csv"

    code, _, stderr = score(str(test_csv), "--format", "kaggle", "--out", str(out), "--batch-size", "128")

    assert code == 0, stderr
    assert out.read_bytes() == reference.read_bytes()
    assert out.read_bytes().startswith(b"ImageId,Label\n1,")


def test_kaggle_train_csv_prints_accuracy_and_plots_the_confusion_matrix(
    tmp_path: Path, score: Score, client, mnist_test_sample
) -> None:
    images, labels = mnist_test_sample
    train_csv = tmp_path / "train.csv"
    write_kaggle_csv(train_csv, images[:400], labels[:400])
    plot = tmp_path / "confusion.png"

    code, stdout, stderr = score(str(train_csv), "--plot", str(plot))

    assert code == 0, stderr
    rows = stdout.splitlines()  # no --out: the rows on standard output, the report on standard error
    assert rows[0] == "input,digit,label,confidence,expected" and len(rows) == 401
    assert rows[1].startswith(f"{train_csv}:2,")
    correct = int(np.sum(np.array(service_digits(client, images[:400])) == labels[:400]))
    assert f"accuracy: {correct / 400:.4%} ({correct}/400)" in stderr
    assert f"wrote {plot}" in stderr
    with Image.open(plot) as picture:
        assert picture.format == "PNG" and picture.width > 300


def test_decoding_goes_to_worker_processes_only_where_a_file_costs_enough(
    tmp_path: Path, score: Score, mnist_test_sample, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_pngs(tmp_path / "scans", mnist_test_sample[0][:40])
    out = tmp_path / "out.csv"

    code, _, small = score(str(folder), "--verbose", "--out", str(out))
    assert code == 0, small
    assert "40 image files: the first 16 took" in small and "so they are decoded in the reading thread" in small
    assert "stages, busy share of the" in small and "inference" in small and "write" in small
    in_thread = out.read_bytes()

    # files that took as long as photos: the same probe sends them to worker processes
    monkeypatch.setattr(sources, "POOL_MIN_FILE_S", 0.0)
    monkeypatch.setattr(sources, "POOL_MIN_WORK_S", 0.0)
    monkeypatch.setattr(sources, "usable_cores", lambda: 2)
    code, _, costly = score(str(folder), "--verbose", "--out", str(out))
    assert code == 0, costly
    assert "so they are decoded in 2 worker processes" in costly
    assert out.read_bytes() == in_thread


@pytest.mark.parametrize(("per_file_s", "files", "jobs", "size"), [
    (0.003, 400, 2, 7),  # photos, measured: about 20 ms of decoding a task
    (sources.POOL_MIN_FILE_S, 400, 2, 50),  # --jobs 2, cost unmeasured: 8 tasks, not 3 uneven ones
    (0.0002, 4000, 2, 100),  # small PNGs: 20 ms a task, 40 tasks
    (0.0, 100_000, 4, 256),  # nearly free files: at most MAX_TASK_FILES
    (0.003, 3, 2, 1),
])
def test_worker_tasks_are_small_enough_to_share_out(per_file_s: float, files: int, jobs: int, size: int) -> None:
    assert sources.task_size(per_file_s, files, jobs) == size
    tasks = -(-files // size)
    assert tasks >= min(files, sources.TASKS_PER_JOB * jobs)


# --- bad inputs ----------------------------------------------------------------------------------


def bad_inputs(tmp_path: Path, images: np.ndarray) -> dict[str, Path]:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(images[i]).save(folder / f"good{i}.png")
    (folder / "notes.png").write_text("this is not an image")
    good_png = (folder / "good0.png").read_bytes()
    (folder / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    Image.new("L", (40, 40), 255).save(folder / "blank.png")
    csv_path = tmp_path / "test.csv"
    write_kaggle_csv(csv_path, images[:10])
    lines = csv_path.read_text().splitlines(keepends=True)
    lines[3] = "1,2,3\n"  # line 4
    lines[7] = lines[7].replace("0,", "zero,", 1)  # line 8
    csv_path.write_text("".join(lines))
    return {"folder": folder, "csv": csv_path}


def test_bad_files_and_rows_are_reported_skipped_and_counted(
    tmp_path: Path, score: Score, mnist_test_sample
) -> None:
    images, _ = mnist_test_sample
    bad = bad_inputs(tmp_path, images)
    missing = tmp_path / "missing.png"
    out = tmp_path / "out.csv"

    code, _, stderr = score(str(bad["folder"]), str(bad["csv"]), str(missing), "--jobs", "0",
                            "--out", str(out))

    assert code == 1
    folder, csv_path = bad["folder"], bad["csv"]
    assert f"skipped {missing}: no such file or directory" in stderr
    assert f"skipped {folder / 'notes.png'}: could not decode image: the data is not an image" in stderr
    truncated = next(line for line in stderr.splitlines() if line.startswith(f"skipped {folder / 'truncated.png'}: "))
    assert "could not decode image" in truncated and "truncated" in truncated
    assert f"skipped {folder / 'blank.png'}: the image contains no ink" in stderr
    assert f"skipped {csv_path}:4: expected 784 columns, found 3" in stderr
    assert f"skipped {csv_path}:8: column pixel0: 'zero' is not an integer" in stderr
    assert "6 bad input(s) skipped" in stderr
    names = [row["input"] for row in read_csv_rows(out)]
    assert names == [str(folder / f"good{i}.png") for i in range(6)] + [
        f"{csv_path}:{line}" for line in (2, 3, 5, 6, 7, 9, 10, 11)
    ]


def test_kaggle_submission_keeps_image_ids_aligned_when_a_row_is_skipped(
    tmp_path: Path, score: Score, mnist_test_sample
) -> None:
    images, _ = mnist_test_sample
    csv_path = bad_inputs(tmp_path, images)["csv"]
    code, stdout, _ = score(str(csv_path), "--format", "kaggle")
    assert code == 1
    ids = [int(line.split(",")[0]) for line in stdout.splitlines()[1:]]
    assert ids == [1, 2, 4, 5, 6, 8, 9, 10]  # rows on lines 4 and 8 (ImageId 3 and 7) were bad


def test_strict_stops_at_the_first_bad_input_and_leaves_the_output_untouched(
    tmp_path: Path, score: Score, mnist_test_sample
) -> None:
    images, _ = mnist_test_sample
    bad = bad_inputs(tmp_path, images)
    out = tmp_path / "out.csv"
    out.write_text("previous results\n")

    code, _, stderr = score(str(bad["csv"]), str(bad["folder"]), "--strict", "--out", str(out))

    assert code == 1
    assert f"stopped at the first bad input (--strict): {bad['csv']}:4: expected 784 columns" in stderr
    assert "nothing was written" in stderr
    assert ":8:" not in stderr and "notes.png" not in stderr  # it stopped at the first
    assert out.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed", "out.csv", "test.csv"]  # no temporary left


def test_strict_stops_at_a_bad_image_file(tmp_path: Path, score: Score, mnist_test_sample) -> None:
    images, _ = mnist_test_sample
    folder = bad_inputs(tmp_path, images)["folder"]
    out = tmp_path / "out.csv"
    code, _, stderr = score(str(folder), "--strict", "--jobs", "2", "--out", str(out))
    assert code == 1 and "stopped at the first bad input (--strict): " in stderr
    assert f"{folder / 'blank.png'}: the image contains no ink" in stderr  # the first in sorted order
    assert not out.exists()


def test_labels_that_do_not_match_the_images_are_refused(
    tmp_path: Path, score: Score, mnist_test_sample
) -> None:
    _, labels = mnist_test_sample
    short = tmp_path / "short-labels-idx1-ubyte"
    write_idx(short, labels[:10])
    code, _, stderr = score(str(IDX_IMAGES), "--labels", str(short))
    assert code == 1
    assert f"{IDX_IMAGES}: holds 1,000 images but its --labels file {short} holds 10 labels" in stderr
    code, _, stderr = score(str(IDX_IMAGES), "--labels", str(IDX_LABELS), "--labels", str(short))
    assert code == 2 and "2 --labels file(s) for 1 IDX image input(s)" in stderr
    code, _, stderr = score(str(IDX_LABELS))
    assert code == 1 and "this is an IDX label file; pass it with --labels" in stderr


# --- the command as a whole ------------------------------------------------------------------------


def test_scoring_never_imports_torch_and_the_local_engine_never_imports_ray(
    tmp_path: Path, models_dir: Path, mnist_test_sample
) -> None:
    folder = write_pngs(tmp_path / "pngs", mnist_test_sample[0][:40])
    check = (
        "import sys, cli\n"
        "code = cli.main(sys.argv[1:])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
        "sys.exit(code)\n"
    )
    argv = ["score", "--quiet", "--models-dir", str(models_dir), str(folder), str(IDX_IMAGES),
            "--labels", str(IDX_LABELS), "--jobs", "2", "--plot", str(tmp_path / "cm.png"),
            "--out", str(tmp_path / "out.csv")]
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", check, *argv], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "onnxruntime" in imported and "service.imaging" in imported
    assert not {m for m in imported if m.split(".")[0] in ("torch", "ray")}


def test_an_idx_or_csv_run_starts_without_the_service_s_web_and_image_modules(
    tmp_path: Path, models_dir: Path, mnist_test_sample
) -> None:
    test_csv = tmp_path / "test.csv"
    write_kaggle_csv(test_csv, mnist_test_sample[0][:50])
    argv = ["score", "--quiet", "--models-dir", str(models_dir), str(test_csv), str(IDX_IMAGES),
            "--format", "kaggle", "--out", str(tmp_path / "submission.csv")]
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "cli", *argv], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "onnxruntime" in imported
    heavy = ("pydantic", "pydantic_settings", "fastapi", "starlette", "cv2", "PIL", "tqdm", "multiprocessing", "torch")
    assert not {m for m in imported if m.split(".")[0] in heavy}


def test_help_explains_every_option_with_its_default() -> None:
    parser = cli.build_parser(["score"])
    score_parser = next(
        action.choices["score"] for action in parser._actions if getattr(action, "choices", None)
        and "score" in action.choices  # type: ignore[operator]
    )
    options = [a for a in score_parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 18
    for action in options:
        assert action.help and "default" in action.help, action.option_strings
    text = io.StringIO()
    score_parser.print_help(text)
    for words in ("--format", "kaggle", "--url", "--concurrency", "Retry-After", "--strict", "exit status"):
        assert words in text.getvalue()


def test_unknown_model_is_a_usage_error(score: Score) -> None:
    code, _, stderr = score(str(IDX_IMAGES), "--model", "resnet")
    assert code == 2 and "no model 'resnet'" in stderr and "lenet5" in stderr



# --- the streaming stages ------------------------------------------------------------------------------------


def test_the_reader_stays_a_bounded_distance_ahead_and_stops_when_the_consumer_leaves() -> None:
    produced: list[int] = []
    finished = threading.Event()

    def source() -> Iterator[int]:
        try:
            for i in range(1000):
                produced.append(i)
                yield i
        finally:
            finished.set()

    with Prefetcher(source(), depth=3) as ahead:
        assert next(ahead) == 0
        time.sleep(0.3)  # give the producer time to run ahead as far as it may
        assert len(produced) <= 1 + 3 + 1  # taken, queued, and one waiting to be queued
    assert finished.wait(5)  # leaving the block closed the generator, in its own thread
    assert len(produced) < 10


def test_an_error_while_reading_reaches_the_consumer() -> None:
    def source() -> Iterator[int]:
        yield 1
        raise OSError("disk gone")

    with Prefetcher(source(), depth=2) as ahead:
        assert next(ahead) == 1
        with pytest.raises(OSError, match="disk gone"):
            next(ahead)


def test_ordered_map_keeps_the_input_order_with_a_bounded_window() -> None:
    in_flight: list[int] = []
    peak = 0

    def work(i: int) -> int:
        time.sleep(0.001 * (i % 3))  # finish out of order
        return i * i

    with ThreadPoolExecutor(4) as pool:

        def submit(i: int) -> Future[int]:
            nonlocal peak
            in_flight.append(i)
            peak = max(peak, len(in_flight))
            return pool.submit(work, i)

        results = []
        for result in ordered_map(submit, range(40), window=5):
            results.append(result)
            in_flight.pop(0)
    assert results == [i * i for i in range(40)]
    assert peak <= 5


# --- the default settings -----------------------------------------------------------------------------


@pytest.mark.parametrize("n_cores", [1, 2, 4, 16])
def test_default_rule_one_inference_thread_per_core_for_arrays_and_one_for_image_files(
    tmp_path: Path, n_cores: int
) -> None:
    from clients.score import DEFAULT_BATCH_LOCAL, DEFAULT_BATCH_RAY, DEFAULT_BATCH_REMOTE, Settings, default_settings

    folder = write_pngs(tmp_path / "pngs", np.zeros((3, 28, 28), np.uint8))
    arrays = plan_inputs([str(IDX_IMAGES)])
    mixed = plan_inputs([str(folder), str(IDX_IMAGES)])
    images = plan_inputs([str(folder)])
    assert default_settings(arrays, n_cores) == Settings(n_cores, DEFAULT_BATCH_LOCAL, None)
    assert default_settings(mixed, n_cores) == Settings(n_cores, DEFAULT_BATCH_LOCAL, None)
    assert default_settings(images, n_cores) == Settings(1, DEFAULT_BATCH_LOCAL, None)
    assert default_settings(arrays, n_cores, remote=True) == Settings(1, DEFAULT_BATCH_REMOTE, 0)
    assert default_settings(arrays, n_cores, engine="ray") == Settings(1, DEFAULT_BATCH_RAY, 0)


def test_several_inference_threads_give_the_results_in_input_order(models_dir: Path) -> None:
    from clients.batches import Batch
    from clients.score import LocalScorer, load_local_model

    model = load_local_model(None, models_dir, device="cpu", threads=1, batch_size=1)
    images = np.asarray(np.random.default_rng(0).integers(0, 256, (300, 28, 28)), np.uint8)
    _, reference = model.run(images.astype(np.float32).reshape(-1, 1, 28, 28))

    def batches(size: int) -> Iterator[Batch]:
        for start in range(0, len(images), size):
            part = images[start : start + size]
            yield Batch([str(i) for i in range(start, start + len(part))], np.arange(start, start + len(part)), None,
                        pixels=part)

    for streams, size in ((1, 300), (2, 7), (3, 64), (4, 1)):
        scorer = LocalScorer(model, streams)
        scored = list(scorer.map(scorer.prepare(batch) for batch in batches(size)))
        assert [name for s in scored for name in s.batch.names] == [str(i) for i in range(len(images))]
        np.testing.assert_allclose(np.concatenate([s.probabilities for s in scored]), reference, atol=1e-6)
    with pytest.raises(ValueError, match="at least 1"):
        LocalScorer(model, 0)
