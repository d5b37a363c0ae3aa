"""Run every benchmark, one after the other, each printing its own side-by-side figures.

    python -m bench.run_all            everything at full size (tens of minutes; needs full MNIST and wrk)
    python -m bench.run_all --quick    small sizes, a few minutes in all: checks that every benchmark runs
    python -m bench.run_all --only kaggle_csv batcher

`make bench` runs the quick mode. Each benchmark is a module of this package run in its own
process; a benchmark whose tool is missing (wrk) is skipped with a message. Record the figures of
full runs in bench/RESULTS.md. The exit status is 1 when any benchmark failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "mnist-sample"


def full_mnist_dir() -> Path | None:
    """$DIGITS_MNIST_DIR, else ../shared/data/mnist beside the repository, when it holds the files."""
    for candidate in (os.environ.get("DIGITS_MNIST_DIR"), REPO.parent / "shared" / "data" / "mnist"):
        if candidate and (Path(candidate) / "train-images-idx3-ubyte.gz").is_file():
            return Path(candidate)
    return None


@dataclass(frozen=True)
class Bench:
    name: str  # the module bench.bench_<name>
    quick: tuple[str, ...]  # arguments of the quick mode
    full: tuple[str, ...] = ()  # arguments of a full run
    needs: str | None = None  # a program that must be on PATH, or "cuda" for ONNX Runtime's CUDA provider


def benches(mnist: Path | None) -> list[Bench]:
    data = str(mnist or SAMPLE)
    return [
        Bench("batcher", ("--rounds", "5")),
        Bench("kaggle_csv", ("--rows", "5000", "--repeat", "1", "--mnist-dir", data)),
        Bench("score", ("--repeats", "1", "--pngs", "300", "--csv-rows", "2000", "--mnist-dir", data)),
        Bench("service", ("--duration", "1", "--rounds", "1", "--clients", "1", "16", "--configs", "batched",
                          "unbatched", "--kinds", "json", "png"), needs="wrk"),
        Bench("reliability", ("--duration", "2", "--only", "small")),
        Bench("train", ("--max-epochs", "1", "--target", "0.3", "--threads", "1", "--data-dir", str(SAMPLE),
                        "--no-verify")),
        Bench("devices", ("--batch-sizes", "1", "64"), needs="cuda"),
    ]


def missing(need: str | None) -> str | None:
    """Why a benchmark cannot run here, or None."""
    if need == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return "no CUDA execution provider (pip install -e '.[serve,gpu]' on a machine with a GPU)"
        return None
    if need and shutil.which(need) is None:
        return f"{need} is not installed (apt-get install {need})"
    return None


def main(argv: list[str] | None = None) -> int:
    mnist = full_mnist_dir()
    known = [bench.name for bench in benches(mnist)]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes in all")
    parser.add_argument("--only", nargs="+", choices=known, default=known, help="benchmarks to run (default: all)")
    args = parser.parse_args(argv)
    outcomes: list[tuple[str, str, float]] = []
    for bench in benches(mnist):
        if bench.name not in args.only:
            continue
        reason = missing(bench.needs)
        if reason:
            print(f"\n=== bench_{bench.name}: skipped, {reason}")
            outcomes.append((bench.name, "skipped", 0.0))
            continue
        command = [sys.executable, "-m", f"bench.bench_{bench.name}", *(bench.quick if args.quick else bench.full)]
        print(f"\n=== bench_{bench.name}: {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        status = subprocess.run(command, cwd=REPO).returncode
        outcomes.append((bench.name, "ok" if status == 0 else f"failed ({status})", time.perf_counter() - started))
    print("\n| benchmark | outcome | seconds |\n| --- | --- | ---: |")
    for name, outcome, seconds in outcomes:
        print(f"| {name} | {outcome} | {seconds:.0f} |")
    return 1 if any(outcome.startswith("failed") for _, outcome, _ in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
