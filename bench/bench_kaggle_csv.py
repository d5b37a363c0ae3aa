"""Reading a Kaggle digit-recognizer train.csv: core.kaggle.read_kaggle_csv against other readers.

Writes a train.csv of --rows real MNIST digits (the competition's file has 42,000 rows, ~76 MB)
to a temporary folder, then, in the same run and interleaved over --repeat rounds, times:

* core.kaggle.read_kaggle_csv: numpy's C reader (np.loadtxt) a ~1 MiB block of lines at a time,
  with line-numbered errors (what training and `digits score` use);
* np.loadtxt on the whole file at once (no error reporting, the whole text in memory);
* pyarrow.csv.read_csv and polars.read_csv, when installed (they are not dependencies).

Each reader must give the same numbers. Prints a markdown table with the best wall and CPU time
of each and its ratio to read_kaggle_csv; on a busy machine the CPU time is the steadier.
The digits come from --mnist-dir: $DIGITS_MNIST_DIR, else ../shared/data/mnist next to the
repository, else the 2,000-image sample tiled up to --rows. Usage: python -m bench.bench_kaggle_csv
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

from core.kaggle import read_kaggle_csv, write_kaggle_csv
from testkit.data import SAMPLE_DIR, load_mnist

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["label"] + [f"pixel{i}" for i in range(784)]


def default_mnist_dir() -> Path:
    explicit = os.environ.get("DIGITS_MNIST_DIR")
    if explicit:
        return Path(explicit)
    shared = REPO.parent / "shared" / "data" / "mnist"
    return shared if (shared / "train-images-idx3-ubyte.gz").is_file() else SAMPLE_DIR


def source_digits(folder: Path, rows: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``rows`` training images and labels from ``folder``, tiled when it holds fewer."""
    images, labels = load_mnist(folder, "train")
    what = f"{folder} ({len(images):,} training images)"
    if rows > len(images):
        reps = -(-rows // len(images))
        images, labels = np.tile(images, (reps, 1, 1)), np.tile(labels, reps)
        what += f", tiled x{reps}"
    return images[:rows], labels[:rows], what


def readers(path: Path) -> dict[str, Callable[[], np.ndarray]]:
    """name -> a function reading ``path`` into an int [rows, 785] table (label first)."""

    def ours() -> np.ndarray:
        table = read_kaggle_csv(path)
        assert table.labels is not None
        return np.column_stack([table.labels, table.images.reshape(len(table.images), -1)])

    found: dict[str, Callable[[], np.ndarray]] = {
        "core.kaggle.read_kaggle_csv (np.loadtxt by blocks)": ours,
        "np.loadtxt, whole file": lambda: np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int16),
    }
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        options = pacsv.ConvertOptions(column_types=dict.fromkeys(COLUMNS, pa.int16()))
        found["pyarrow.csv.read_csv"] = lambda: np.column_stack(
            [column.to_numpy() for column in pacsv.read_csv(path, convert_options=options).columns]
        )
    except ImportError:
        print("pyarrow not installed: skipped")
    try:
        import polars as pl

        schema = dict.fromkeys(COLUMNS, pl.Int16)
        found["polars.read_csv"] = lambda: pl.read_csv(path, schema_overrides=schema).to_numpy()
    except ImportError:
        print("polars not installed: skipped")
    return found


def timed(fn: Callable[[], np.ndarray]) -> tuple[float, float, np.ndarray]:
    """(wall seconds, process CPU seconds, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=42_000,
                        help="rows in the generated train.csv (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="interleaved rounds; the best is kept (default: %(default)s)")
    parser.add_argument("--mnist-dir", type=Path, default=None,
                        help="folder with the MNIST IDX files to take digits from "
                        "(default: $DIGITS_MNIST_DIR, else ../shared/data/mnist, else the sample)")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.repeat < 1:
        parser.error("--rows and --repeat must be at least 1")

    images, labels, what = source_digits(args.mnist_dir or default_mnist_dir(), args.rows)
    expected = np.column_stack([labels, images.reshape(len(images), -1)])
    with tempfile.TemporaryDirectory(prefix="bench-kaggle-csv-") as tmp:
        path = Path(tmp) / "train.csv"
        write_kaggle_csv(path, images, labels)
        megabytes = path.stat().st_size / 1e6
        found = readers(path)
        best: dict[str, tuple[float, float]] = {}
        same = True
        for _ in range(args.repeat):
            for name, read in found.items():
                wall, cpu, table = timed(read)
                same &= bool(np.array_equal(table, expected))
                old = best.get(name, (float("inf"), float("inf")))
                best[name] = (min(old[0], wall), min(old[1], cpu))

    print(f"source: {what}")
    print(f"file: {args.rows:,} rows, {megabytes:.1f} MB; best of {args.repeat} interleaved rounds")
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    print()
    print("| reader | wall s | CPU s | MB/s (wall) | wall / ours |")
    print("| --- | ---: | ---: | ---: | ---: |")
    ours = next(iter(best.values()))[0]
    for name, (wall, cpu) in best.items():
        print(f"| {name} | {wall:.3f} | {cpu:.3f} | {megabytes / wall:.0f} | {wall / ours:.2f} |")
    print(f"\nsame numbers from every reader: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
