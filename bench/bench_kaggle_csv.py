"""Reading a Kaggle digit-recognizer train.csv: training.datasets.read_kaggle_csv against numpy.loadtxt.

Writes a train.csv of --rows real MNIST digits (the competition's file has 42,000 rows, ~76 MB)
to a temporary folder, then, in the same run, times read_kaggle_csv (best of --repeat) and
numpy.loadtxt on the same file (once: it is the slow side), checks that both read the same
numbers, and prints a markdown table with the ratio. Wall time and process CPU time are both
shown: on a busy machine the CPU time is the steadier of the two.

The digits come from --mnist-dir: $DIGITS_MNIST_DIR, else ../shared/data/mnist next to the
repository, else the 2,000-image test sample tiled up to --rows.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training import datasets  # noqa: E402

SAMPLE = REPO / "tests" / "data" / "mnist-sample"


def default_mnist_dir() -> Path:
    explicit = os.environ.get("DIGITS_MNIST_DIR")
    if explicit:
        return Path(explicit)
    shared = REPO.parent / "shared" / "data" / "mnist"
    return shared if (shared / "train-images-idx3-ubyte.gz").is_file() else SAMPLE


def source_digits(folder: Path, rows: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``rows`` training images and labels from ``folder``, tiled when it holds fewer."""
    # Unverified: any MNIST-format digits will do for timing a reader.
    images, labels = datasets.load_split("mnist", "train", folder, verify=False, download_missing=False)
    what = f"{folder} ({len(images):,} training images)"
    if rows > len(images):
        reps = -(-rows // len(images))
        images, labels = np.tile(images, (reps, 1, 1)), np.tile(labels, reps)
        what += f", tiled x{reps}"
    return images[:rows], labels[:rows], what


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=42_000, help="rows in the generated train.csv (default: %(default)s)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="times read_kaggle_csv is run; the best is reported (default: %(default)s)",
    )
    parser.add_argument(
        "--mnist-dir",
        type=Path,
        default=None,
        help="folder with the MNIST IDX files to take digits from "
        "(default: $DIGITS_MNIST_DIR, else ../shared/data/mnist, else the test sample)",
    )
    args = parser.parse_args()
    if args.rows < 1 or args.repeat < 1:
        parser.error("--rows and --repeat must be at least 1")

    images, labels, what = source_digits(args.mnist_dir or default_mnist_dir(), args.rows)
    with tempfile.TemporaryDirectory(prefix="bench-kaggle-csv-") as tmp:
        path = Path(tmp) / "train.csv"
        write_s, _, _ = timed(lambda: datasets.write_kaggle_csv(path, images, labels))
        megabytes = path.stat().st_size / 1e6

        runs = [timed(lambda: datasets.read_kaggle_csv(path)) for _ in range(args.repeat)]
        ours_wall, ours_cpu = min(r[0] for r in runs), min(r[1] for r in runs)
        table = runs[0][2]
        assert isinstance(table, datasets.KaggleChunk)

        def loadtxt() -> np.ndarray:
            return np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.uint8)

        ref_wall, ref_cpu, reference = timed(loadtxt)
        assert isinstance(reference, np.ndarray)
        same = np.array_equal(reference[:, 0], table.labels) and np.array_equal(
            reference[:, 1:], table.images.reshape(len(table.images), -1)
        )

    print(f"source: {what}")
    print(f"file: {args.rows:,} rows, {megabytes:.1f} MB (written in {write_s:.2f} s by write_kaggle_csv)")
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print()
    print("| reader | runs | wall s | CPU s | MB/s (wall) | rows/s (wall) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, runs_done, wall, cpu in [
        ("training.datasets.read_kaggle_csv", f"best of {args.repeat}", ours_wall, ours_cpu),
        ("numpy.loadtxt(delimiter=',', dtype=uint8)", "1", ref_wall, ref_cpu),
    ]:
        speed = f"{megabytes / wall:.0f} | {args.rows / wall:,.0f}"
        print(f"| {name} | {runs_done} | {wall:.3f} | {cpu:.3f} | {speed} |")
    print()
    print(f"loadtxt / read_kaggle_csv: {ref_wall / ours_wall:.2f}x wall, {ref_cpu / ours_cpu:.2f}x CPU")
    print(f"same numbers: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
