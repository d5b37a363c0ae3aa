"""The `digits` entry point: a command whose extra is not installed says how to install it, in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Runs `digits ARGS` in a fresh interpreter where the given packages cannot be imported,
# as on an install without the extra that brings them.
BLOCKED_RUN = """
import sys
blocked = set(sys.argv[1].split(","))

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Block())
import cli
sys.exit(cli.main(sys.argv[2:]))
"""


def run_without(blocked: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, blocked, *argv], cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("command", ["train", "export"])
def test_training_commands_on_a_serve_only_install_print_the_install_command(command: str) -> None:
    result = run_without("torch,onnx,onnxscript", command, "--help")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"error: digits {command} needs the 'train' extra (torch is not installed); "
        "install it with: pip install -e '.[train]'\n"
    )


def test_scoring_on_a_train_only_install_prints_the_install_command() -> None:
    result = run_without("PIL,fastapi,httpx", "score", "--help")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().endswith("install it with: pip install -e '.[serve]'")
    assert len(result.stderr.splitlines()) == 1


def test_the_top_level_help_needs_no_extra() -> None:
    result = run_without("torch,fastapi,onnxruntime,matplotlib", "--help")
    assert result.returncode == 0
    assert "train" in result.stdout and "serve" in result.stdout


def test_score_plot_without_matplotlib_says_how_to_add_it(tmp_path: Path) -> None:
    sample = REPO / "tests" / "data" / "mnist-sample"
    result = run_without(
        "matplotlib", "score", str(sample / "t10k-images-idx3-ubyte.gz"), "--labels",
        str(sample / "t10k-labels-idx1-ubyte.gz"), "--plot", str(tmp_path / "cm.png"), "--quiet",
    )
    assert result.returncode == 2
    assert result.stderr == "error: --plot needs matplotlib, which is not installed: pip install -e '.[plot]'\n"
    assert not (tmp_path / "cm.png").exists()
