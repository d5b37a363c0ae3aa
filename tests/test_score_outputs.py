"""`digits score` writes the same bytes for every input kind whatever its pipeline settings.

The recorded outputs in tests/data/score-golden/ were written by the scorer before its pipeline
was reworked for speed; any change of batching, threads, worker processes or stage overlap must
keep them byte for byte. To record them again after a deliberate change of the output format or
the shipped model, run this module with DIGITS_RECORD_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testkit.score_inputs import GOLDEN_DIR, RUNS, build_inputs
from tests.conftest import Score

RECORD = os.environ.get("DIGITS_RECORD_GOLDEN") == "1"
# settings that change how the work is split, never what is written
VARIANTS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "small batches, one thread, decoding in the reading thread": ("--batch-size", "7", "--threads", "1",
                                                                  "--jobs", "0"),
    "two decoding processes, large batches": ("--jobs", "2", "--batch-size", "4096"),
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
