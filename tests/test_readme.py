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


def test_models_table_is_the_one_the_export_writes(tmp_path: Path) -> None:
    """The README's models table is written from the manifest by `digits export --readme`:
    the shipped figures and the README's agree, and a re-export rewrites just that block."""
    import json

    from training.model_table import BEGIN, END, models_table, update_readme

    root = Path(__file__).resolve().parents[1]
    manifest = json.loads((root / "models" / "manifest.json").read_text())
    block = README.split(BEGIN, 1)[1].split(END, 1)[0]
    assert block.strip() == models_table(manifest).strip()
    for entry in manifest["models"]:
        assert f"**{100 * entry['metrics']['test_accuracy']:.2f} %**" in block

    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{BEGIN}\nstale figures\n{END}\n\nThe rest.\n")
    update_readme(readme, root / "models" / "manifest.json")
    text = readme.read_text()
    assert "stale figures" not in text and text.startswith("# Title\n") and text.endswith("\n\nThe rest.\n")
    assert models_table(manifest) in text
