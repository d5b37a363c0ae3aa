"""Time to train LeNet-5 to a test accuracy (default 99.0 %) on full MNIST, on this CPU.

Runs `digits train` with --stop-at-test-accuracy for each thread count given, side by side in
one run, and prints the wall time (training only: the per-epoch test evaluation is excluded),
epochs needed and the ratio between thread counts. Default data: $DIGITS_MNIST_DIR, else
../shared/data/mnist beside the repository, else the download cache.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import cli

REPO = Path(__file__).resolve().parents[1]


def default_data_dir() -> str | None:
    for candidate in (os.environ.get("DIGITS_MNIST_DIR"), REPO.parent / "shared" / "data" / "mnist"):
        if candidate and (Path(candidate) / "train-images-idx3-ubyte.gz").is_file():
            return str(candidate)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=float, default=0.99, help="test accuracy to reach (default: %(default)s)")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1],
                        help="torch thread counts to compare (default: 2 1)")
    parser.add_argument("--max-epochs", type=int, default=8,
                        help="epochs of the one-cycle schedule; the run stops earlier at the target "
                        "(default: %(default)s)")
    parser.add_argument("--data-dir", default=default_data_dir(),
                        help="MNIST IDX files (default: $DIGITS_MNIST_DIR or ../shared/data/mnist)")
    parser.add_argument("--no-verify", action="store_true",
                        help="accept IDX files that are not the official ones, e.g. tests/data/mnist-sample")
    args = parser.parse_args(argv)

    rows = []
    for threads in args.threads:
        with tempfile.TemporaryDirectory() as out:
            command = ["train", "--model", "lenet5", "--epochs", str(args.max_epochs), "--lr", "0.003",
                    "--batch-size", "128", "--threads", str(threads), "--seed", "0", "--quiet",
                    "--stop-at-test-accuracy", str(args.target), "--out", out]
            if args.data_dir:
                command += ["--data-dir", args.data_dir]
            if args.no_verify:
                command.append("--no-verify")
            cli.main(command)
            history = json.loads((Path(out) / "metrics.json").read_text())
        last = history[-1]
        reached = last["test_acc"] >= args.target
        rows.append((threads, last["elapsed_s"], last["epoch"], last["test_acc"], reached))

    print(f"\nLeNet-5 to {args.target:.1%} test accuracy (Adam, one-cycle lr 0.003, batch 128, no augmentation)")
    print("| torch threads | seconds | epochs | test accuracy | reached |")
    print("| ---: | ---: | ---: | ---: | --- |")
    for threads, seconds, epochs, acc, reached in rows:
        print(f"| {threads} | {seconds:.1f} | {epochs} | {acc:.2%} | {'yes' if reached else 'no'} |")
    if len(rows) > 1:
        base = rows[-1][1]
        for threads, seconds, *_ in rows[:-1]:
            print(f"speed-up of {threads} threads over {rows[-1][0]}: {base / seconds:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
