"""The README's copy-pasteable examples, run as written (paths rebased into a temporary folder)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

import cli

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def readme_command(*words: str) -> list[str]:
    """The first line of a README code block that starts with `digits` and holds every word, split like a shell."""
    for line in README.splitlines():
        if line.startswith("digits ") and all(word in line for word in words):
            return shlex.split(line.split("  #")[0])[1:]
    raise AssertionError(f"the README has no `digits` command with {words}")


def rebased(argv: list[str], tmp_path: Path) -> list[str]:
    """Repository paths made absolute; outputs (--out) moved into ``tmp_path``."""
    out: list[str] = []
    for previous, arg in zip(["", *argv], argv, strict=False):
        if previous == "--out":
            out.append(str(tmp_path / arg))
        elif arg.startswith("tests/"):
            out.append(str(REPO / arg))
        else:
            out.append(arg)
    return out


def test_the_first_score_example_prints_a_summary_and_writes_the_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = rebased(readme_command("score", "--labels"), tmp_path)
    assert cli.main([*argv, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("accuracy: ")
    assert "precision" in out and "confusion matrix" in out and "nan" not in out
    assert len(out.splitlines()) < 40  # a summary, not 1,000 rows
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 1000  # a header and one row per image


def test_the_offline_dry_run_example_trains_on_the_sample_without_a_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    monkeypatch.setenv("DIGITS_MNIST_MIRRORS", "http://127.0.0.1:9/unreachable/")  # any download would fail
    argv = readme_command("train", "--dry-run", "mnist-sample")
    given = REPO / "tests" / "data" / "mnist-sample"
    before = sorted(p.name for p in given.iterdir())
    assert cli.main([*rebased(argv, tmp_path), "--quiet"]) == 0
    assert sorted(p.name for p in given.iterdir()) == before  # the sample folder is only read
    assert (tmp_path / "runs" / "dry-run" / "results.json").is_file()
    assert "nan" not in capsys.readouterr().out
