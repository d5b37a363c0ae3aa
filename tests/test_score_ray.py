"""`digits score --engine ray` writes what `--engine local` writes, on a local Ray instance.

Ray starts once for the module (2 CPUs, a 128 MiB object store, no dashboard); the engine joins it
instead of starting its own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.score_inputs import build_inputs
from tests.conftest import Score

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, object_store_memory=128 * 2**20, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, mnist_test_sample) -> Path:
    root = tmp_path_factory.mktemp("ray-inputs")
    build_inputs(root, *mnist_test_sample)
    return root


def both_engines(score: Score, out_dir: Path, *argv: str) -> dict[str, tuple[int, bytes, list[str], str]]:
    """Of each engine for the same command: exit status, output bytes, the bad-input lines of stderr and
    the report that labels print (standard output, as the rows go to --out)."""
    runs = {}
    for engine in ("local", "ray"):
        out = out_dir / f"{engine}.out"
        code, stdout, stderr = score(*argv, "--engine", engine, "--out", str(out))
        runs[engine] = (code, out.read_bytes() if out.exists() else b"",
                        [line for line in stderr.splitlines() if line.startswith(("skipped", "error"))], stdout)
    return runs


@pytest.mark.parametrize(
    ("argv", "status"),
    [
        (("test.csv", "--format", "kaggle"), 1),  # two malformed rows
        (("t10k-images.gz", "--labels", "t10k-labels.gz", "--batch-size", "64"), 0),
        (("digits", "--folder-labels"), 1),  # three files that are not digits
    ],
    ids=["kaggle-csv", "idx-gz-labels", "image-folder"],
)
def test_ray_writes_what_the_local_engine_writes(
    argv: tuple[str, ...], status: int, inputs: Path, ray_instance: None, score: Score,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.chdir(inputs)
    runs = both_engines(score, tmp_path, *argv)
    assert runs["local"][0] == status
    assert runs["ray"] == runs["local"]  # exit status, bytes written, bad inputs reported, labels' report
    if "--labels" in argv or "--folder-labels" in argv:
        assert "accuracy: " in runs["ray"][3] and "confusion matrix" in runs["ray"][3]


def test_ray_strict_stops_at_the_first_bad_input(
    inputs: Path, ray_instance: None, score: Score, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(inputs)
    runs = both_engines(score, tmp_path, "digits", "test.csv", "--strict")
    assert runs["ray"] == runs["local"]
    code, written, errors, _ = runs["ray"]
    assert code == 1 and written == b"" and errors[0].startswith("error: stopped at the first bad input (--strict)")


def test_ray_and_url_together_are_a_usage_error(score: Score) -> None:
    code, _, stderr = score("x.png", "--engine", "ray", "--url", "http://127.0.0.1:9")
    assert code == 2 and "choose one" in stderr
