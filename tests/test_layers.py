"""The direction of imports: core/ is the ground floor; service/ and clients/ never reach into training/."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, wherever the import statement is."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ["service", "clients"])
def test_serving_and_scoring_never_import_training(package: str) -> None:
    paths = sorted((REPO / package).rglob("*.py"))
    offenders = [str(p.relative_to(REPO)) for p in paths if "training" in imported_modules(p)]
    assert offenders == [], f"{offenders} import training/: move what they need into core/"


def test_core_imports_no_other_package_of_the_project() -> None:
    project = {"training", "service", "clients", "cli", "testkit", "torch", "fastapi", "starlette"}
    for path in sorted((REPO / "core").rglob("*.py")):
        assert imported_modules(path) & project == set(), path


def test_core_and_the_download_module_load_without_torch() -> None:
    modules = "core.contract, core.files, core.idx, core.kaggle, core.metrics, core.plots, training.download"
    code = f"import sys, {modules}; sys.exit('torch' in sys.modules or 'matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_the_api_images_carry_core_but_not_training() -> None:
    stages: dict[str, list[str]] = {}
    current = ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            current = line.split(" AS ")[-1].strip()
            stages[current] = []
        elif line.startswith("COPY ") and current:
            stages[current].append(line)
    api = {name: copies for name, copies in stages.items() if name.startswith("api")}
    assert api, "the Dockerfile has no api stage"
    for name, copies in api.items():
        assert not any("training/" in line for line in copies), (name, copies)
        if any("service/" in line for line in copies):
            assert "COPY core/ core/" in copies, (name, copies)
