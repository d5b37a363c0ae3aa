"""The README is the user's manual: it must open with the two commands and document every setting."""

from __future__ import annotations

from pathlib import Path

from service.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_opens_with_the_serve_and_test_commands() -> None:
    first_block = README.split("```")[1]
    assert "make serve" in first_block and "make test" in first_block


def test_every_setting_is_documented() -> None:
    missing = [f"DIGITS_{name.upper()}" for name in Settings.model_fields if f"`DIGITS_{name.upper()}`" not in README]
    assert not missing, f"README lacks {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "make test" in ci
