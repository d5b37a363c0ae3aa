"""`digits score --read`: the number in each image file, in-process and through a running service."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.app import create_app
from service.settings import Settings
from testkit import handwriting
from testkit.data import SAMPLE_DIR
from tests.conftest import Score
from tests.test_score_remote import serving


@pytest.fixture(scope="module")
def number_files(tmp_path_factory: pytest.TempPathFactory,
                 mnist_test_sample: tuple[np.ndarray, np.ndarray]) -> tuple[Path, list[handwriting.Sample]]:
    folder = tmp_path_factory.mktemp("numbers")
    samples = list(handwriting.numbers(*mnist_test_sample, 8, seed=51))
    for k, sample in enumerate(samples):
        (folder / f"n{k}.{'png' if sample.kind.endswith('canvas') else 'jpg'}").write_bytes(sample.data)
    return folder, samples


@pytest.fixture(scope="module")
def service_url(models_dir: Path) -> Iterator[str]:
    with serving(create_app(Settings(models_dir=models_dir))) as url:
        yield url


def _texts(folder: Path, samples: list[handwriting.Sample]) -> dict[str, str]:
    return {str(folder / f"n{k}.{'png' if s.kind.endswith('canvas') else 'jpg'}"): s.text
            for k, s in enumerate(samples)}


@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
def test_read_writes_the_number_per_image(
    score: Score, number_files: tuple[Path, list[handwriting.Sample]], remote: bool, request: pytest.FixtureRequest
) -> None:
    folder, samples = number_files
    url = ["--url", request.getfixturevalue("service_url")] if remote else []
    code, out, err = score(str(folder), "--read", "--format", "csv", *url)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["input"] for r in rows] == sorted(r["input"] for r in rows)
    truth = _texts(folder, samples)
    assert set(truth) == {r["input"] for r in rows}
    right = sum(r["text"] == truth[r["input"]] for r in rows)
    assert right >= len(rows) - 2, rows
    for row in rows:
        assert 0.0 <= float(row["confidence"]) <= 1.0
        assert len(row["boxes"].split(";")) == len(row["text"])


def test_read_jsonl_local_and_remote_agree(
    score: Score, number_files: tuple[Path, list[handwriting.Sample]], service_url: str
) -> None:
    folder, _ = number_files
    local = [json.loads(line) for line in score(str(folder), "--read", "--format", "jsonl")[1].splitlines()]
    remote = [json.loads(line) for line in
              score(str(folder), "--read", "--format", "jsonl", "--url", service_url)[1].splitlines()]
    assert [r["text"] for r in local] == [r["text"] for r in remote]
    assert [[d["box"] for d in r["digits"]] for r in local] == [[d["box"] for d in r["digits"]] for r in remote]
    assert set(local[0]) == {"input", "text", "confidence", "digits"}


def test_read_skips_blank_images_and_refuses_idx(score: Score, tmp_path: Path) -> None:
    (tmp_path / "blank.jpg").write_bytes(next(handwriting.empty_photos(1, seed=52)).data)
    code, _, err = score(str(tmp_path), "--read")
    assert code == 1 and "blank.jpg" in err and "no ink" in err
    code, _, err = score(str(SAMPLE_DIR / "t10k-images-idx3-ubyte.gz"), "--read")
    assert code == 2 and "image files" in err
