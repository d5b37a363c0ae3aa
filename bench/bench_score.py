"""Throughput of `digits score`, every figure measured side by side in one run; prints a markdown table.

1. The local pipeline on the 10,000 MNIST test images read from the IDX file (as shipped, gzip,
   and decompressed), with labels, CSV rows written to a file, at its default settings for this
   machine (and at 1 thread), against raw ONNX Runtime on the same images already in memory as
   float32 at its best batch size, at the same thread count. Goal: >= 0.9 of raw. Beside them, the
   same work with no pipeline at all (inference threads on arrays in memory while one more thread
   reads the file and writes the rows): the most any pipeline of these stages reaches here.
2. Image files, `digits score` as a command: small PNGs (28x28 MNIST digits) at the default
   settings against decoding in the reading thread and in 2 worker processes (goal: the default
   never slower than the reading thread); 640x480 JPEG photos in 1 and 2 worker processes (goal:
   two >= 1.6x one) and at the default.
3. A 28,000-row Kaggle test.csv to a submission, end to end (`digits score` as a subprocess,
   start-up and model loading included, its bytecode cached as an installed command's is) against
   in-process at the same settings (goal: >= 0.8).
4. `--engine ray` (a local Ray instance on this machine) beside the local engine: the IDX file and
   the PNG folder, `digits score` as a command (its own images/s figure: Ray's start-up excluded).
5. Remote against local: the same IDX images (v2 binary tensors) and PNGs (multipart uploads)
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
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from subprocess import run

import numpy as np
import onnxruntime as ort
from PIL import Image

from clients.outputs import RowFormatter
from clients.score import (
    LocalScorer,
    Reporter,
    Scorer,
    default_settings,
    load_local_model,
    score_inputs,
)
from clients.sources import Plan, ReadOptions, iter_batches, plan_inputs
from core.idx import load_idx_images
from core.kaggle import write_kaggle_csv
from core.machine import usable_cores
from core.metrics import confusion_matrix
from service.runtime import LoadedModel
from testkit.score_inputs import photo

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
    parser.add_argument("--photos", type=int, default=400,
                        help="640x480 JPEG photos to write and score (default: 400)")
    parser.add_argument("--skip-ray", action="store_true", help="skip the Ray engine (default: run it)")
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


def without_pipeline(plan: Plan, model: LoadedModel, x: np.ndarray, threads: int, size: int,
                     probabilities: np.ndarray, out: Path) -> float:
    """Seconds for the pipeline's work with nothing coordinating it: ``threads`` threads run the model on
    in-memory float32 batches (each every ``threads``-th batch), while one more thread reads the input as
    `digits score` does (decompression, names, labels) and writes the CSV rows of ``probabilities`` (the
    model's outputs, computed beforehand) and counts the confusion matrix. No queue, no hand-off, no
    waiting: what any pipeline of these stages can reach on this machine."""
    formatter = RowFormatter("csv", model.labels)

    def infer(first: int) -> None:
        for start in range(first * size, len(x), threads * size):
            model.run(x[start : start + size])

    def read_and_write() -> None:
        done = 0
        with out.open("w") as f:
            f.write(formatter.header())
            for batch in iter_batches(plan.sources, ReadOptions(size, jobs=0)):
                scored = probabilities[done : done + len(batch)]
                f.write(formatter.rows(batch.names, batch.positions, batch.labels, scored))
                if batch.labels is not None:
                    confusion_matrix(batch.labels, scored.argmax(axis=1), len(model.labels))
                done += len(batch)

    workers = [threading.Thread(target=infer, args=(i,)) for i in range(threads)]
    workers.append(threading.Thread(target=read_and_write))
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - start


def bench_idx(args: argparse.Namespace, table: Table, tmp: Path) -> LoadedModel:
    """Section 1; returns the model as `digits score` loads it (one ONNX Runtime thread)."""
    images_path = args.mnist_dir / "t10k-images-idx3-ubyte.gz"
    labels_path = args.mnist_dir / "t10k-labels-idx1-ubyte.gz"
    raw_idx = tmp / "t10k-images-idx3-ubyte"
    raw_idx.write_bytes(gzip.decompress(images_path.read_bytes()))
    x = load_idx_images(images_path).astype(np.float32).reshape(-1, 1, 28, 28)  # [N,1,28,28], in memory
    n = len(x)
    plans = {"IDX.gz": plan_inputs([str(images_path)], [str(labels_path)]),
             "raw IDX": plan_inputs([str(raw_idx)], [str(labels_path)])}
    default = default_settings(plans["IDX.gz"], usable_cores())
    # what `digits score` loads: one ONNX Runtime thread, scoring `threads` batches at once
    model = load_local_model(args.model, args.models_dir, device="cpu", threads=1, batch_size=default.batch_size,
                             spinning=False)
    print(f"1. {n:,} MNIST test images: `digits score` against raw ONNX Runtime (defaults here: "
          f"{default.threads} inference threads, batch {default.batch_size})", flush=True)
    for threads in sorted({1, default.threads}):
        # raw: one session of `threads` intra-op threads, ONNX Runtime's own defaults (idle threads spin)
        raw_model = load_local_model(args.model, args.models_dir, device="cpu", threads=threads,
                                     batch_size=max(BATCH_SIZES))
        contenders: dict[str, tuple[LocalScorer, int]] = {"": (LocalScorer(model, threads), default.batch_size)}
        pool = ThreadPoolExecutor(threads)
        if threads > 1:  # the previous default: one batch of 1024 shared out across intra-op threads
            intra_op = load_local_model(args.model, args.models_dir, device="cpu", threads=threads, batch_size=1024,
                                        spinning=False)
            contenders[f", one batch of 1024 on {threads} intra-op threads (the previous default)"] = (
                LocalScorer(intra_op), 1024)
        for size in BATCH_SIZES:
            raw_model.run(x[:size])  # warm every shape once

        def raw(size: int, model: LoadedModel = raw_model) -> None:
            for start in range(0, n, size):
                model.run(x[start : start + size])

        def raw_batches(size: int = default.batch_size, pool: ThreadPoolExecutor = pool) -> None:  # one per thread
            list(pool.map(lambda start: model.run(x[start : start + size]), range(0, n, size)))

        raw_runs: dict[int, list[float]] = {size: [] for size in BATCH_SIZES}
        pipe_runs: dict[tuple[str, str], list[float]] = {}
        batch_runs: list[float] = []
        bare_runs: list[float] = []  # the same work with no pipeline (without_pipeline)
        _, probabilities = model.run(x)
        cpu_runs: dict[str, list[float]] = {"raw": [], "pipeline": []}  # the default's CPU seconds on IDX.gz
        for _ in range(args.repeats):
            for batch in BATCH_SIZES:
                cpu = time.process_time()
                raw_runs[batch].append(timed(lambda batch=batch: raw(batch)))
                if batch == default.batch_size and threads == 1:
                    cpu_runs["raw"].append(time.process_time() - cpu)
            if threads > 1:  # (CPU seconds of this one: the intra-op threads above spin while they wait)
                cpu = time.process_time()
                batch_runs.append(timed(raw_batches))
                cpu_runs["raw"].append(time.process_time() - cpu)
            bare_runs.append(without_pipeline(plans["IDX.gz"], model, x, threads, default.batch_size, probabilities,
                                              tmp / "bare.csv"))
            for kind, plan in plans.items():
                for note, (scorer, size) in contenders.items():
                    cpu = time.process_time()
                    pipe_runs.setdefault((kind, note), []).append(
                        pipeline(plan, scorer, ReadOptions(size, jobs=0), model.labels, tmp / "idx.csv")
                    )
                    if kind == "IDX.gz" and not note:
                        cpu_runs["pipeline"].append(time.process_time() - cpu)
        best_size = min(BATCH_SIZES, key=lambda batch: min(raw_runs[batch]))
        raw_rate = best_rate(n, raw_runs[best_size])
        table.add(f"raw ONNX Runtime, {threads} thread(s), float32 arrays in memory, best batch {best_size}",
                  raw_rate)
        print("    raw by batch size: " + ", ".join(f"{batch}: {best_rate(n, raw_runs[batch]):,.0f}"
                                                    for batch in BATCH_SIZES))
        if batch_runs:
            table.add(f"raw ONNX Runtime, {threads} threads each running its own batches of {default.batch_size} "
                      "(one intra-op thread), in memory", best_rate(n, batch_runs), f"raw, {threads} thread(s)",
                      min(raw_runs[best_size]) / min(batch_runs))
        pool.shutdown()
        bare_rate = best_rate(n, bare_runs)
        table.add(f"no pipeline: {threads} thread(s) running batches of {default.batch_size} in memory while one more "
                  "reads the IDX.gz and writes the CSV rows (the most any pipeline reaches here)", bare_rate,
                  f"raw, {threads} thread(s)", bare_rate / raw_rate)
        # On a machine shared with other jobs the CPU seconds vary less than wall time: the pipeline's
        # reading, decompression and writing on top of inference, whatever share of the cores the run got
        print(f"    CPU seconds, batches of {default.batch_size} on {threads} thread(s) of one ONNX Runtime thread: "
              f"raw {min(cpu_runs['raw']):.3f}, `digits score` IDX.gz "
              f"{min(cpu_runs['pipeline']):.3f} (ratio {min(cpu_runs['raw']) / min(cpu_runs['pipeline']):.2f})")
        is_default = " (the default here)" if threads == default.threads else ""
        for (kind, note), runs in pipe_runs.items():
            rate = best_rate(n, runs)
            what = note or f", {threads} inference thread(s), batch {default.batch_size}{is_default}"
            table.add(f"`digits score` {kind} + labels -> CSV file{what}", rate, f"raw, {threads} thread(s)",
                      rate / raw_rate)
            if kind == "IDX.gz" and not note:
                print(f"    ({rate / bare_rate:.2f} of the no-pipeline figure)")
    return model


def write_pngs(folder: Path, count: int, mnist_dir: Path) -> None:
    images = load_idx_images(mnist_dir / "t10k-images-idx3-ubyte.gz")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(255 - images[i % len(images)]).save(folder / f"{i:05d}.png")  # dark ink on white paper


def write_photos(folder: Path, count: int, mnist_dir: Path) -> None:
    """640x480 JPEGs of digits on noisy paper: files that cost a few milliseconds each to decode."""
    images = load_idx_images(mnist_dir / "t10k-images-idx3-ubyte.gz")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo(images[i % len(images)], seed=i).save(folder / f"{i:05d}.jpg", quality=90)


def cli_rate(argv: list[str]) -> float:
    """images/s that `digits score ARGV` reports (scoring only: start-up and model loading excluded).

    Run as `python -m cli`, as a user would: decoding worker processes then import the small cli.py
    as their main module, where an in-process run would make them import this benchmark script."""
    done = run([sys.executable, "-m", "cli", "score", "--quiet", *argv], cwd=REPO, check=True,
               capture_output=True, text=True, env=command_env())
    match = re.search(r"\(([\d,]+) images/s\)", done.stderr)
    assert match, done.stderr
    return float(match.group(1).replace(",", ""))


def command_env() -> dict[str, str]:
    """The environment of a `digits score` command: this one, with Python's bytecode cache on, as an installed
    command runs (pip compiles it at install time; a shell with PYTHONDONTWRITEBYTECODE=1 set would make every
    command compile the project's modules again, about 40 ms of start-up on two cores), and this checkout first
    on the path, so that decoding worker processes import its modules even where an editable install of
    another checkout is on the path."""
    env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def best_cli_rates(args: argparse.Namespace, contenders: dict[str, list[str]], out: Path) -> dict[str, float]:
    """Best images/s of each contender's `digits score` arguments, the contenders alternating."""
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(max(1, args.repeats // 2)):
        for name, argv in contenders.items():
            rates[name].append(cli_rate([*argv, "--models-dir", str(args.models_dir), "--out", str(out)]))
    return {name: max(runs) for name, runs in rates.items()}


def bench_images(args: argparse.Namespace, table: Table, tmp: Path) -> dict[str, float]:
    pngs, photos = tmp / "pngs", tmp / "photos"
    write_pngs(pngs, args.pngs, args.mnist_dir)
    write_photos(photos, args.photos, args.mnist_dir)
    print(f"2. image files (`digits score` as a command): {args.pngs:,} small PNGs and {args.photos:,} 640x480 "
          "JPEG photos", flush=True)
    png = best_cli_rates(args, {"default": [str(pngs)], "thread": [str(pngs), "--jobs", "0"],
                                "2 workers": [str(pngs), "--jobs", "2"]}, tmp / "png.csv")
    table.add("`digits score` PNG folder, decoded in the reading thread (--jobs 0)", png["thread"])
    table.add("`digits score` PNG folder, 2 worker processes (--jobs 2)", png["2 workers"], "reading thread",
              png["2 workers"] / png["thread"])
    table.add("`digits score` PNG folder, default settings", png["default"], "reading thread",
              png["default"] / png["thread"])
    jpg = best_cli_rates(args, {"1 worker": [str(photos), "--jobs", "1"], "2 workers": [str(photos), "--jobs", "2"],
                                "default": [str(photos)]}, tmp / "photos.csv")
    table.add("`digits score` 640x480 photos, 1 worker process (--jobs 1)", jpg["1 worker"])
    table.add("`digits score` 640x480 photos, 2 worker processes (--jobs 2)", jpg["2 workers"], "1 worker process",
              jpg["2 workers"] / jpg["1 worker"])
    table.add("`digits score` 640x480 photos, default settings", jpg["default"], "1 worker process",
              jpg["default"] / jpg["1 worker"])
    return {"png": png["default"]}


def bench_ray(args: argparse.Namespace, table: Table, tmp: Path) -> None:
    images = str(args.mnist_dir / "t10k-images-idx3-ubyte.gz")
    labels = str(args.mnist_dir / "t10k-labels-idx1-ubyte.gz")
    print("4. --engine ray (a local Ray instance, started by each command) beside the local engine", flush=True)
    idx = best_cli_rates(args, {"local": [images, "--labels", labels],
                                "ray": [images, "--labels", labels, "--engine", "ray"]}, tmp / "ray.csv")
    table.add("`digits score --engine ray` IDX.gz + labels -> CSV (Ray's start-up excluded)", idx["ray"],
              "local engine, defaults", idx["ray"] / idx["local"])
    png = best_cli_rates(args, {"local": [str(tmp / "pngs")], "ray": [str(tmp / "pngs"), "--engine", "ray"]},
                         tmp / "ray.csv")
    table.add("`digits score --engine ray` PNG folder", png["ray"], "local engine, defaults",
              png["ray"] / png["local"])


def bench_kaggle(args: argparse.Namespace, table: Table, tmp: Path, model: LoadedModel) -> None:
    images = load_idx_images(args.mnist_dir / "train-images-idx3-ubyte.gz")[: args.csv_rows]
    test_csv = tmp / "test.csv"
    write_kaggle_csv(test_csv, images)
    size_mb = test_csv.stat().st_size / 2**20
    print(f"3. Kaggle test.csv, {len(images):,} rows ({size_mb:.0f} MB) -> submission", flush=True)
    submission = tmp / "submission.csv"
    command = [sys.executable, "-m", "cli", "score", str(test_csv), "--format", "kaggle", "--out", str(submission),
               "--quiet", "--models-dir", str(args.models_dir)] + (["--model", args.model] if args.model else [])
    walls, inproc, cpu_walls, cpu_inproc = [], [], [], []
    plan = plan_inputs([str(test_csv)])
    default = default_settings(plan, usable_cores())
    warm_up = [str(tmp / "warm-up.csv") if arg == str(submission) else arg for arg in command]
    run(warm_up, cwd=REPO, check=True, capture_output=True, env=command_env())  # untimed: writes the bytecode cache
    for _ in range(max(1, args.repeats // 2)):
        # CPU seconds too: on a machine shared with other jobs they vary less than wall time
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        walls.append(timed(lambda: run(command, cwd=REPO, check=True, capture_output=True, env=command_env())))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_walls.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        cpu = time.process_time()
        inproc.append(pipeline(plan, LocalScorer(model, default.threads), ReadOptions(default.batch_size, jobs=0),
                               model.labels, submission, fmt="kaggle"))
        cpu_inproc.append(time.process_time() - cpu)
    lines = submission.read_text().count("\n")
    assert lines == len(images) + 1, f"the submission has {lines} lines"
    table.add("the same, in-process (model loaded, default settings)", best_rate(len(images), inproc))
    table.add(f"`digits score test.csv --format kaggle`, {len(images):,} rows, whole command "
              f"({min(walls):.2f} s incl. start-up)", best_rate(len(images), walls), "in-process",
              min(inproc) / min(walls))
    print(f"    CPU seconds: whole command {min(cpu_walls):.2f}, in-process {min(cpu_inproc):.2f} "
          f"(ratio {min(cpu_inproc) / min(cpu_walls):.2f})")


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
            local = default_settings(idx_plan, usable_cores())
            local_idx.append(pipeline(idx_plan, LocalScorer(model, local.threads),
                                      ReadOptions(local.batch_size, jobs=0), model.labels, tmp / "l.csv"))
    n = idx_plan.total or 1
    table.add("remote IDX.gz (v2 binary tensors, batch 256, 2 requests in flight)", best_rate(n, remote_idx),
              "local IDX.gz (defaults)", min(local_idx) / min(remote_idx))
    remote_png_rate = best_rate(args.pngs, remote_png)
    table.add("remote PNG folder (multipart, batch 256, 2 requests in flight)", remote_png_rate,
              "local PNG folder (defaults)", remote_png_rate / local_png_rate)


def main() -> int:
    args = parse_args()
    if not (args.mnist_dir / "t10k-images-idx3-ubyte.gz").is_file():
        print(f"error: no MNIST IDX files in {args.mnist_dir}; pass --mnist-dir or set DIGITS_MNIST_DIR",
              file=sys.stderr)
        return 2
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# digits score throughput: {platform.processor() or platform.machine()}, {usable_cores()} cores to run on, "
          f"load average {load:.1f}, onnxruntime {ort.__version__}, best of {args.repeats}", flush=True)
    table = Table()
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp_dir:
        tmp = Path(tmp_dir)
        default = bench_idx(args, table, tmp)  # the model as `digits score` loads it
        png_rates = bench_images(args, table, tmp)
        bench_kaggle(args, table, tmp, default)
        if not args.skip_ray:
            bench_ray(args, table, tmp)
        if not args.skip_remote:
            bench_remote(args, table, tmp, default, png_rates["png"])
    print()
    print(f"model: {default.name} v{default.version}; load average at the end "
          f"{os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan'):.1f}")
    print(table.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
