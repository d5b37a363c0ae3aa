"""`digits score` writes the same bytes for every input kind whatever its pipeline settings.

The recorded outputs in tests/data/score-golden/ were written by the scorer before its pipeline
was reworked for speed; any change of batching, threads, worker processes or stage overlap must
keep them byte for byte. To record them again after a deliberate change of the output format or
the shipped model, run this module with DIGITS_RECORD_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pytest

from clients.outputs import RowFormatter, fixed_point
from testkit.score_inputs import GOLDEN_DIR, RUNS, build_inputs
from tests.conftest import Score

RECORD = os.environ.get("DIGITS_RECORD_GOLDEN") == "1"
# settings that change how the work is split, never what is written
VARIANTS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "small batches, one thread, decoding in the reading thread": ("--batch-size", "7", "--threads", "1",
                                                                  "--jobs", "0"),
    "two decoding processes, large batches": ("--jobs", "2", "--batch-size", "4096"),
    "three inference threads on small batches": ("--threads", "3", "--batch-size", "16"),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, mnist_test_sample) -> Path:
    root = tmp_path_factory.mktemp("score-inputs")
    build_inputs(root, *mnist_test_sample)
    return root


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", list(RUNS))
def test_outputs_are_byte_identical_to_the_recorded_ones(
    name: str, variant: str, inputs: Path, score: Score, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(inputs)  # the outputs name the inputs by these relative paths
    out = inputs / f"out-{name}"
    code, _, stderr = score(*RUNS[name], *VARIANTS[variant], "--out", str(out))
    bad_inputs = name.startswith(("kaggle-test", "folder", "mixed"))
    assert code == (1 if bad_inputs else 0), stderr
    if RECORD and variant == "defaults":
        (GOLDEN_DIR / name).write_bytes(out.read_bytes())
    assert out.read_bytes() == (GOLDEN_DIR / name).read_bytes(), f"{name} differs from the recorded output"


# --- the CSV writer's fast path against the reference formatting -------------------------------------


def _reference_csv(names: list[str], probabilities: np.ndarray, expected: np.ndarray, labels: list[str]) -> str:
    """Each row formatted on its own by the csv module, as the writer did before its fast path."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    for name, p, t in zip(names, probabilities.tolist(), expected.tolist(), strict=True):
        d = max(range(len(p)), key=p.__getitem__)
        writer.writerow([name, d, labels[d], f"{p[d]:.6f}", "" if t < 0 else t])
    return text.getvalue()


def test_fixed_point_rounds_exactly_like_python_formatting() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.random(200_000).astype(np.float32),
        (np.arange(1, 2**16, dtype=np.float64) / 2**17).astype(np.float32),  # many exact ties at 6 decimals
        np.float32([0.0, 1.0, 0.5, 0.1, 1e-7, 5e-7, 4.9999e-7, 0.9999995, np.nextafter(np.float32(1), 0)]),
    ])
    millionths = fixed_point(values)
    assert millionths is not None
    assert [f"{q // 10**6}.{q % 10**6:06d}" for q in millionths.tolist()] == [f"{v:.6f}" for v in values.tolist()]
    assert fixed_point(np.float32([1.5])) is None and fixed_point(np.float32([np.nan])) is None
    assert fixed_point(np.float64([0.5])) is None


@pytest.mark.parametrize("names", [
    [f"data/t10k-images.gz[{i}]" for i in range(300)],
    [f"scans/{i},{i}.png" if i % 7 == 0 else f'a"{i}".png' if i % 11 == 0 else f"s/{i}.png" for i in range(300)],
])
def test_csv_rows_are_the_reference_formatting(names: list[str]) -> None:
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.full(10, 0.2), len(names)).astype(np.float32)
    expected = rng.integers(-1, 10, len(names))
    labels = [str(d) for d in range(10)]
    formatter = RowFormatter("csv", labels)
    text = "".join(formatter.rows(names[i : i + 64], np.arange(i + 1, i + 65)[: len(names[i : i + 64])],
                                  expected[i : i + 64], probabilities[i : i + 64]) for i in range(0, len(names), 64))
    assert text == _reference_csv(names, probabilities, expected, labels)
    assert formatter.rows([], np.empty(0, np.int64), None, np.empty((0, 10), np.float32)) == ""
