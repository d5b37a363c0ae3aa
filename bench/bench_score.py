"""Throughput of `digits score`, every figure measured side by side in one run; prints a markdown table.

1. The local pipeline on the 10,000 MNIST test images read from the IDX file (as shipped, gzip,
   and decompressed), with labels, CSV rows written to a file, against raw ONNX Runtime on the
   same images already in memory as float32 at its best batch size; 1 and 2 intra-op threads.
   Goal: >= 0.85 of raw.
2. Image files (PNGs written to a temporary folder): decoded in the reading thread, by 1 and by
   2 worker processes (the speed-up from the second core).
3. A 28,000-row Kaggle test.csv to a submission, end to end (`digits score` as a subprocess,
   start-up and model loading included) and in-process.
4. Remote against local: the same IDX images (v2 binary tensors) and PNGs (multipart uploads)
   through `digits serve` on 127.0.0.1.

Each figure is the best of --repeats runs, alternating between the contenders so that load
from other processes hits them alike. Usage: python -m bench.bench_score [--help]
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from clients.outputs import RowFormatter
from clients.score import (
    DEFAULT_BATCH_LOCAL,
    DEFAULT_BATCH_ONE_THREAD,
    LocalScorer,
    Reporter,
    Scorer,
    load_local_model,
    score_inputs,
)
from clients.sources import Plan, ReadOptions, plan_inputs
from core.idx import load_idx_images
from core.kaggle import write_kaggle_csv
from service.runtime import LoadedModel

REPO = Path(__file__).resolve().parents[1]

BATCH_SIZES = (64, 128, 256, 512, 1024, 2048, 4096)


def default_mnist_dir() -> Path:
    return Path(os.environ.get("DIGITS_MNIST_DIR") or REPO.parent / "shared" / "data" / "mnist")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist-dir", type=Path, default=default_mnist_dir(),
                        help="folder with the MNIST IDX files (default: $DIGITS_MNIST_DIR, else ../shared/data/mnist "
                             "next to the repository)")
    parser.add_argument("--models-dir", type=Path, default=REPO / "models",
                        help="models folder (default: the repository's models/)")
    parser.add_argument("--model", default=None, help="model name (default: the manifest's default model)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure; the best counts (default: 5)")
    parser.add_argument("--pngs", type=int, default=4000, help="PNG files to write and score (default: 4000)")
    parser.add_argument("--csv-rows", type=int, default=28000,
                        help="rows of the Kaggle test.csv, like the competition's (default: 28000)")
    parser.add_argument("--skip-remote", action="store_true", help="skip the remote measurements (default: run them)")
    return parser.parse_args()


def best_rate(images: int, runs: list[float]) -> float:
    return images / min(runs)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, what: str, rate: float, against: str = "", ratio: float | None = None) -> None:
        self.rows.append((what, f"{rate:,.0f}", against, "" if ratio is None else f"{ratio:.2f}"))
        print(f"  {what}: {rate:,.0f} images/s" + (f" ({ratio:.2f} of {against})" if ratio is not None else ""),
              flush=True)

    def markdown(self) -> str:
        lines = ["| measurement | images/s | compared with | ratio |", "|---|---:|---|---:|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows]
        return "\n".join(lines)


def pipeline(plan: Plan, scorer: Scorer, options: ReadOptions, labels: list[str], out: Path,
             fmt: str = "csv") -> float:
    """Seconds for one `digits score` run of the plan (model already loaded), output to ``out``."""
    return score_inputs(plan, scorer, options, RowFormatter(fmt, labels), out, Reporter(), progress=None).elapsed_s


def bench_idx(args: argparse.Namespace, table: Table, tmp: Path) -> dict[int, LoadedModel]:
    images_path = args.mnist_dir / "t10k-images-idx3-ubyte.gz"
    labels_path = args.mnist_dir / "t10k-labels-idx1-ubyte.gz"
    raw_idx = tmp / "t10k-images-idx3-ubyte"
    raw_idx.write_bytes(gzip.decompress(images_path.read_bytes()))
    x = load_idx_images(images_path).astype(np.float32).reshape(-1, 1, 28, 28)  # [N,1,28,28], in memory
    n = len(x)
    plans = {"IDX.gz": plan_inputs([str(images_path)], [str(labels_path)]),
             "raw IDX": plan_inputs([str(raw_idx)], [str(labels_path)])}
    models = {}
    print(f"1. {n:,} MNIST test images: `digits score` against raw ONNX Runtime", flush=True)
    for threads in (1, 2):
        model = load_local_model(args.model, args.models_dir, device="cpu", threads=threads,
                                 batch_size=max(BATCH_SIZES))
        models[threads] = model
        for size in BATCH_SIZES:
            model.run(x[:size])  # warm every shape once

        def raw(size: int, model: LoadedModel = model) -> None:
            for start in range(0, n, size):
                model.run(x[start : start + size])

        raw_runs: dict[int, list[float]] = {size: [] for size in BATCH_SIZES}
        pipe_runs: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.repeats):
            for size in BATCH_SIZES:
                raw_runs[size].append(timed(lambda size=size: raw(size)))
            for kind, plan in plans.items():
                for size in (DEFAULT_BATCH_LOCAL, DEFAULT_BATCH_ONE_THREAD):
                    pipe_runs.setdefault((kind, size), []).append(
                        pipeline(plan, LocalScorer(model), ReadOptions(size, jobs=0), model.labels, tmp / "idx.csv")
                    )
        best_size = min(BATCH_SIZES, key=lambda size: min(raw_runs[size]))
        raw_rate = best_rate(n, raw_runs[best_size])
        table.add(f"raw ONNX Runtime, {threads} thread(s), float32 arrays in memory, best batch {best_size}",
                  raw_rate)
        print("    raw by batch size: " + ", ".join(f"{size}: {best_rate(n, raw_runs[size]):,.0f}"
                                                    for size in BATCH_SIZES))
        default = DEFAULT_BATCH_ONE_THREAD if threads == 1 else DEFAULT_BATCH_LOCAL
        for (kind, size), runs in pipe_runs.items():
            rate = best_rate(n, runs)
            note = " (its default)" if size == default else ""
            table.add(f"`digits score` {kind} + labels -> CSV file, {threads} thread(s), batch {size}{note}",
                      rate, f"raw, {threads} thread(s)", rate / raw_rate)
    return models


def write_pngs(folder: Path, count: int, mnist_dir: Path) -> None:
    images = load_idx_images(mnist_dir / "t10k-images-idx3-ubyte.gz")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(255 - images[i % len(images)]).save(folder / f"{i:05d}.png")  # dark ink on white paper


def cli_rate(argv: list[str]) -> float:
    """images/s that `digits score ARGV` reports (scoring only: start-up and model loading excluded).

    Run as `python -m cli`, as a user would: decoding worker processes then import the small cli.py
    as their main module, where an in-process run would make them import this benchmark script."""
    done = subprocess.run([sys.executable, "-m", "cli", "score", "--quiet", *argv], cwd=REPO, check=True,
                          capture_output=True, text=True)
    match = re.search(r"\(([\d,]+) images/s\)", done.stderr)
    assert match, done.stderr
    return float(match.group(1).replace(",", ""))


def bench_pngs(args: argparse.Namespace, table: Table, tmp: Path) -> dict[int, float]:
    folder = tmp / "pngs"
    write_pngs(folder, args.pngs, args.mnist_dir)
    print(f"2. {args.pngs:,} PNG files (`digits score` as a command): decoded in the reading thread, by 1 and by "
          "2 worker processes", flush=True)
    rates: dict[int, list[float]] = {0: [], 1: [], 2: []}
    for _ in range(max(1, args.repeats // 2)):
        for jobs in rates:
            rates[jobs].append(cli_rate([str(folder), "--jobs", str(jobs), "--threads", "1", "--models-dir",
                                         str(args.models_dir), "--out", str(tmp / "png.csv")]))
    best = {jobs: max(runs) for jobs, runs in rates.items()}
    table.add("`digits score` PNG folder, decoded in the reading thread (--jobs 0)", best[0])
    table.add("`digits score` PNG folder, 1 worker process (--jobs 1)", best[1])
    table.add("`digits score` PNG folder, 2 worker processes (--jobs 2)", best[2], "1 worker process",
              best[2] / best[1])
    return best


def bench_kaggle(args: argparse.Namespace, table: Table, tmp: Path, model: LoadedModel) -> None:
    images = load_idx_images(args.mnist_dir / "train-images-idx3-ubyte.gz")[: args.csv_rows]
    test_csv = tmp / "test.csv"
    write_kaggle_csv(test_csv, images)
    size_mb = test_csv.stat().st_size / 2**20
    print(f"3. Kaggle test.csv, {len(images):,} rows ({size_mb:.0f} MB) -> submission", flush=True)
    submission = tmp / "submission.csv"
    command = [sys.executable, "-m", "cli", "score", str(test_csv), "--format", "kaggle", "--out", str(submission),
               "--quiet", "--models-dir", str(args.models_dir)] + (["--model", args.model] if args.model else [])
    walls, inproc = [], []
    plan = plan_inputs([str(test_csv)])
    for _ in range(max(1, args.repeats // 2)):
        walls.append(timed(lambda: subprocess.run(command, cwd=REPO, check=True, capture_output=True)))
        inproc.append(pipeline(plan, LocalScorer(model), ReadOptions(DEFAULT_BATCH_LOCAL, jobs=0), model.labels,
                               submission, fmt="kaggle"))
    lines = submission.read_text().count("\n")
    assert lines == len(images) + 1, f"the submission has {lines} lines"
    table.add(f"`digits score test.csv --format kaggle`, {len(images):,} rows, whole command "
              f"({min(walls):.2f} s incl. start-up)", best_rate(len(images), walls))
    table.add("the same, in-process (model loaded, 2 threads)", best_rate(len(images), inproc))


def bench_remote(args: argparse.Namespace, table: Table, tmp: Path, model: LoadedModel,
                 local_png_rate: float) -> None:
    from clients.remote import RemoteScorer
    from testkit.live_server import LiveServer

    images_path = args.mnist_dir / "t10k-images-idx3-ubyte.gz"
    idx_plan = plan_inputs([str(images_path)], [str(args.mnist_dir / "t10k-labels-idx1-ubyte.gz")])
    png_plan = plan_inputs([str(tmp / "pngs")])
    with LiveServer(args.models_dir) as server:
        print(f"4. remote (`digits serve` on {server.url}, default batching, 1 thread) against local", flush=True)
        remote_idx, local_idx, remote_png = [], [], []
        for _ in range(max(1, args.repeats // 2)):
            client = RemoteScorer(server.url, model=args.model, concurrency=2)
            try:
                remote_idx.append(pipeline(idx_plan, client, ReadOptions(256, decode=False), model.labels,
                                           tmp / "r.csv"))
                remote_png.append(pipeline(png_plan, client, ReadOptions(256, decode=False), model.labels,
                                           tmp / "r.csv"))
            finally:
                client.close()
            local_idx.append(pipeline(idx_plan, LocalScorer(model), ReadOptions(DEFAULT_BATCH_LOCAL, jobs=0),
                                      model.labels, tmp / "l.csv"))
    n = idx_plan.total or 1
    table.add("remote IDX.gz (v2 binary tensors, batch 256, 2 requests in flight)", best_rate(n, remote_idx),
              "local IDX.gz (2 threads)", min(local_idx) / min(remote_idx))
    remote_png_rate = best_rate(args.pngs, remote_png)
    table.add("remote PNG folder (multipart, batch 256, 2 requests in flight)", remote_png_rate,
              "local PNG folder (--jobs 2)", remote_png_rate / local_png_rate)


def main() -> int:
    args = parse_args()
    if not (args.mnist_dir / "t10k-images-idx3-ubyte.gz").is_file():
        print(f"error: no MNIST IDX files in {args.mnist_dir}; pass --mnist-dir or set DIGITS_MNIST_DIR",
              file=sys.stderr)
        return 2
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# digits score throughput: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load:.1f}, onnxruntime {ort.__version__}, best of {args.repeats}", flush=True)
    table = Table()
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp_dir:
        tmp = Path(tmp_dir)
        models = bench_idx(args, table, tmp)
        png_rates = bench_pngs(args, table, tmp)
        bench_kaggle(args, table, tmp, models[2])  # 2 threads, batch 1024: the defaults for arrays
        if not args.skip_remote:
            bench_remote(args, table, tmp, models[2], png_rates[2])
    print()
    print(f"model: {models[2].name} v{models[2].version}; load average at the end "
          f"{os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan'):.1f}")
    print(table.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
