"""`digits score`: predict the digits of image folders, MNIST IDX files and Kaggle CSVs, locally or remotely.

    INPUT... --plan_inputs--> sources --iter_batches--> Batch --scorer--> Scored
             --> output rows (csv | jsonl | kaggle), confusion matrix, progress bar

Local mode runs the model in-process with ONNX Runtime, loaded and verified through
``service.runtime`` exactly as the service loads it, several batches at once on several cores;
remote mode (``--url``) sends the batches to a running service (see ``clients.remote``). Both
write the same output.

Reading (image files: decoding, in worker processes), scoring and writing overlap, each in
its own thread with a bounded queue between them (see ``score_inputs``), so an input of any
size streams through in bounded memory. This module never imports torch.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from clients.batches import Batch, InputError, Scored
from clients.outputs import FORMATS, RowFormatter, default_format, open_output
from clients.pipeline import Prefetcher, StageClock, ordered_map
from clients.sources import ImageFiles, Plan, ReadOptions, UsageError, iter_batches, plan_inputs
from core.machine import usable_cores
from core.metrics import confusion_matrix, format_report
from core.plots import PlottingUnavailable, require_matplotlib

if TYPE_CHECKING:
    from service.runtime import LoadedModel

# The serve extra's packages this command imports where it needs them (the CLI checks them up front).
REQUIRES = ("onnxruntime", "PIL", "cv2", "httpx")

# Measured in bench/bench_score.py: batches of 128 images stay in the CPU caches and are the fastest per image;
# several cores are used by scoring several such batches at once (one ONNX Runtime thread each), which beats
# sharing out one large batch across ONNX Runtime's threads.
DEFAULT_BATCH_LOCAL = 128
DEFAULT_BATCH_RAY = 1024  # large batches amortise Ray's per-batch scheduling and object-store copies
DEFAULT_BATCH_REMOTE = 256  # the service's default limit of images per request (max_images_per_request)
DEFAULT_CONCURRENCY = 2  # 2 x 256 images fill the service's default queue (512) without overflowing it
MAX_ERRORS_SHOWN = 50  # bad inputs listed one by one; the summary counts all of them
QUEUE_DEPTH = 4  # batches waiting between two stages, at least
QUEUE_IMAGES = 2048  # and up to this many: 16 batches of 128 (IDX test set, loaded 2 cores: 45k -> 54k images/s)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _default_models_dir() -> Path:
    from service.runtime import REPO_MODELS_DIR  # not service.settings: pydantic costs 0.1 s of start-up

    return Path(os.environ.get("DIGITS_MODELS_DIR") or REPO_MODELS_DIR)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Predict the digit of every input image with a model of the models folder (ONNX Runtime in this\n"
        "process) or with a running service (--url), and write one row per image. With labels (IDX\n"
        "--labels, a Kaggle train.csv, or --folder-labels) also print accuracy, per-class precision and\n"
        "recall and the confusion matrix."
    )
    parser.epilog = (
        "inputs:\n"
        "  image files (PNG, JPEG, BMP, WebP, GIF) and folders of them (searched recursively, sorted);\n"
        "  glob patterns (quote them: 'scans/**/*.png'); MNIST IDX image files (raw or .gz);\n"
        "  Kaggle digit-recognizer CSVs: test.csv (pixel0..pixel783) or train.csv (label first).\n"
        "Image files get the service's preprocessing (MNIST recipe); IDX and CSV images are used as\n"
        "they are. Bad inputs (unreadable files, undecodable images, malformed CSV rows) are reported\n"
        "with their path or line, skipped and counted; --strict stops at the first.\n"
        "The input column names each image: its path, FILE[i] for the i-th image (from 0) of an IDX\n"
        "file, FILE:LINE for a CSV row.\n\n"
        "exit status: 0 all inputs scored; 1 some input failed (or the service gave up); 2 usage error.\n\n"
        "examples:\n"
        "  digits score scans/ --out predictions.csv\n"
        "  digits score t10k-images-idx3-ubyte.gz --labels t10k-labels-idx1-ubyte.gz --plot cm.png\n"
        "  digits score test.csv --format kaggle --out submission.csv\n"
        "  digits score train.csv --url http://127.0.0.1:8000 --concurrency 4 --batch-size 128\n"
        "  RAY_ADDRESS=ray://head:10001 digits score /shared/scans/ --engine ray --actors 16"
    )
    add = parser.add_argument
    add("inputs", nargs="+", metavar="INPUT",
        help="image files, folders, glob patterns, IDX image files or Kaggle CSVs")
    add("--labels", action="append", default=[], metavar="FILE",
        help="IDX label file of an IDX image input; once per IDX input, in their order (default: none)")
    add("--folder-labels", action="store_true",
        help="take an image file's true label from the nearest enclosing folder named 0-9, e.g. "
             "digits/7/a.png or digits/7/scans/b.png (default: off)")

    add = parser.add_argument_group("output").add_argument
    add("--out", type=Path, default=None, metavar="FILE",
        help="write the predictions here, atomically (default: standard output)")
    add("--format", choices=FORMATS, default=None,
        help="csv: input,digit,label,confidence,expected; jsonl: one JSON object per image with the 10 "
             "probabilities; kaggle: the digit-recognizer submission ImageId,Label (ImageId = 1-based input "
             "row) (default: jsonl for a .jsonl --out, else csv)")
    add("--read", action="store_true",
        help="read each image file as a whole number (POST /read with --url): csv input,text,confidence,boxes "
             "or jsonl with each digit's prediction and box (default: one digit per image)")
    add("--plot", type=Path, default=None, metavar="FILE",
        help="with labels, save the confusion matrix as a PNG here (default: no plot)")
    add("--strict", action="store_true",
        help="stop at the first bad input, writing no output (default: skip bad inputs and count them)")
    add("--quiet", action="store_true",
        help="no progress bar (default: a progress bar with images/s when standard error is a terminal)")
    add("--verbose", action="store_true",
        help="also print the settings chosen and each pipeline stage's busy share of the run's wall time "
             "(read, preprocess, inference, write; local inference: ONNX Runtime's CPU time per inference "
             "thread): the busiest stage bounds the speed (default: off)")

    add = parser.add_argument_group("model").add_argument
    add("--model", default=None, metavar="NAME",
        help="model name from the manifest, or a path to an .onnx file (default: the manifest's default "
             "model; with --url, the service's default model)")
    add("--batch-size", type=_positive, default=None, metavar="N",
        help=f"images per inference call, or per request with --url (default: {DEFAULT_BATCH_LOCAL}, batches that "
             f"stay in the CPU caches; {DEFAULT_BATCH_RAY} with --engine ray; {DEFAULT_BATCH_REMOTE} remote: the "
             "service's default limit of images per request)")

    add = parser.add_argument_group("local mode").add_argument
    add("--models-dir", type=Path, default=None, metavar="DIR",
        help="folder holding manifest.json and the ONNX files (default: $DIGITS_MODELS_DIR, else the "
             "repository's models/)")
    add("--device", choices=("auto", "cpu", "cuda"), default="auto",
        help="auto: CUDA when onnxruntime-gpu and a GPU are present, else CPU (default: auto)")
    add("--threads", type=_non_negative, default=None, metavar="N",
        help=f"inference threads, each scoring its own batches with one ONNX Runtime thread (N batches at once on "
             f"one session); 0: one per core (default: one per core, {usable_cores()} here, when IDX or CSV inputs are "
             "among the inputs, where inference bounds the speed; 1 when all inputs are image files, whose "
             "decoding bounds it; with --engine ray, the ONNX Runtime threads of each actor: 1)")
    add("--jobs", type=_non_negative, default=None, metavar="N",
        help=f"worker processes decoding image files; 0 decodes them in the reading thread (default: measured: "
             f"the first files are decoded in the reading thread and timed; the rest go to one worker per core, "
             f"{usable_cores()} here, where a file takes 0.4 ms or more, e.g. photos and large scans, and stay in the "
             "reading thread otherwise)")

    add = parser.add_argument_group("engine").add_argument
    add("--engine", choices=("local", "ray"), default="local",
        help="local: this process (ONNX Runtime in a thread, decoding processes); ray: Ray Data, on a local Ray "
             "instance sized to this machine, or on the cluster at $RAY_ADDRESS when it is set (needs the "
             "distributed extra; see README, Batch scoring) (default: local)")
    add("--actors", type=_positive, default=None, metavar="N",
        help="--engine ray: inference actors, each holding one ONNX Runtime session (default: one per 2 CPUs "
             "of the Ray cluster)")

    add = parser.add_argument_group("remote mode").add_argument
    add("--url", default=None,
        help="score with the service at this URL, e.g. http://127.0.0.1:8000 (default: local mode)")
    add("--concurrency", type=_positive, default=DEFAULT_CONCURRENCY, metavar="N",
        help="requests in flight at once; keep N x --batch-size within the service's queue (DIGITS_MAX_QUEUE, "
             f"512 images by default) or it answers 503 (default: {DEFAULT_CONCURRENCY})")
    add("--retries", type=_non_negative, default=5, metavar="N",
        help="retries of one request answered 503/504 or cut off, with exponential backoff honouring "
             "Retry-After (default: 5)")
    add("--retry-budget", type=_non_negative, default=100, metavar="N",
        help="retries allowed in the whole run before giving up (default: 100)")
    add("--timeout", type=float, default=60.0, metavar="SECONDS",
        help="HTTP timeout of one request (default: 60)")
    add("--api-key", default=os.environ.get("DIGITS_API_KEY") or None, metavar="KEY",
        help="API key sent as 'Authorization: Bearer KEY' (default: $DIGITS_API_KEY, else none)")


# --------------------------------------------------------------------------- scorers


class Scorer(Protocol):
    def prepare(self, batch: Batch) -> Batch:
        """Get a batch ready for ``map``; runs in the reading thread, ahead of scoring."""

    def map(self, batches: Iterable[Batch]) -> Iterator[Scored]:
        """Score batches, results in input order."""


class LocalScorer:
    """ONNX Runtime in this process: ``streams`` batches scored at once, each by its own ``session.run``
    call in its own thread (ONNX Runtime's ``run`` is thread-safe and releases the GIL)."""

    def __init__(self, model: LoadedModel, streams: int = 1) -> None:
        if streams < 1:
            raise ValueError(f"streams must be at least 1, got {streams}")
        self.model = model
        self.streams = streams
        self.busy_s = 0.0  # CPU seconds in ONNX Runtime during the latest ``map``, all inference threads together
        self._lock = threading.Lock()

    def prepare(self, batch: Batch) -> Batch:
        """uint8/float32 [n, 28, 28] -> the model's float32 [n, 1, 28, 28]."""
        if batch.pixels is not None:
            batch.pixels = batch.pixels.astype(np.float32, copy=False).reshape(-1, 1, 28, 28)
        return batch

    def score(self, batch: Batch) -> Scored:
        if len(batch) and batch.pixels is not None:
            # CPU time of this thread, which runs the model itself (one ONNX Runtime thread): wall time would
            # count the wait for the GIL after each run, while the reading thread parses
            start = time.thread_time()
            _, probabilities = self.model.run(batch.pixels)
            with self._lock:
                self.busy_s += time.thread_time() - start
        else:
            probabilities = np.empty((0, self.model.num_classes), np.float32)
        batch.pixels = None  # the rows and metrics need only the names, labels and probabilities
        return Scored(batch, probabilities, batch.errors)

    def map(self, batches: Iterable[Batch]) -> Iterator[Scored]:
        self.busy_s = 0.0
        if self.streams == 1:
            yield from map(self.score, batches)
            return
        with ThreadPoolExecutor(self.streams, thread_name_prefix="digits-inference") as pool:
            yield from ordered_map(lambda batch: pool.submit(self.score, batch), batches, window=2 * self.streams)


def load_local_model(
    model: str | None, models_dir: Path | None, *, device: str = "auto", threads: int = 1, batch_size: int = 1,
    spinning: bool = True,
) -> LoadedModel:
    """The manifest's model ``model`` (or its default), or an .onnx file, verified like the service does.
    ``spinning=False`` lets idle ONNX Runtime threads sleep, leaving the cores to the other stages."""
    from service.runtime import ModelError, load_model, read_manifest, select_providers

    try:
        providers = select_providers(device)
        warmup = (batch_size,)
        if model and model.endswith(".onnx") and Path(model).is_file():
            return load_model(model, providers=providers, intra_op_threads=threads, warmup_batch_sizes=warmup,
                              spinning=spinning)
        manifest = read_manifest(models_dir or _default_models_dir())
        wanted = model or manifest.default_model or manifest.entries[0].name
        entry = next((e for e in manifest.entries if e.name == wanted), None)
        if entry is None:
            known = ", ".join(e.name for e in manifest.entries)
            raise UsageError(f"no model {wanted!r} in {manifest.path}; it lists: {known}")
        return load_model(entry.file, name=entry.name, expected_sha256=entry.sha256, version=entry.version,
                          providers=providers, intra_op_threads=threads, warmup_batch_sizes=warmup,
                          manifest=entry.raw, spinning=spinning)
    except ModelError as exc:
        raise UsageError(str(exc)) from None


@dataclass(frozen=True)
class Settings:
    """The pipeline's knobs for one run, from the command line or from ``default_settings``."""

    threads: int  # inference threads, one ONNX Runtime thread each (0: one per core); Ray: threads per actor
    batch_size: int
    jobs: int | None  # decoding worker processes; None: measured per image source (see clients.sources)


def default_settings(plan: Plan, n_cores: int, remote: bool = False, engine: str = "local") -> Settings:
    """The documented rule (README, "Batch scoring"; measured in bench/bench_score.py):

    - threads: one inference thread per core when IDX or CSV arrays are among the inputs (inference
      bounds them; decompression, parsing and writing are light enough to share the cores); 1 when all
      inputs are image files (decoding bounds them: one thread scores tens of thousands of images a
      second, far more than the files decode at). Each inference thread runs its own batches on one
      ONNX Runtime thread: on two cores, the gzip MNIST test set to CSV ran at 0.57-0.78x raw ONNX
      Runtime's best with two intra-op threads on a quiet machine (0.92-0.99x on a busy one), where
      the previous default, one batch of 1024 on two intra-op threads, ran at 0.53-0.69x (0.83-0.87x).
    - batch size: 128 (batches that stay in the CPU caches are the fastest per image); Ray: 1024,
      which amortises its per-batch overhead; remote: 256, the service's default request limit.
    - decoding processes: measured per image source: the reading thread decodes the first files and
      hands the rest to one worker process per core only where a file takes 0.4 ms or more.
    """
    if remote:
        return Settings(threads=1, batch_size=DEFAULT_BATCH_REMOTE, jobs=0)
    if engine == "ray":  # more actors instead of more threads per actor
        return Settings(threads=1, batch_size=DEFAULT_BATCH_RAY, jobs=0)
    arrays = any(not isinstance(source, ImageFiles) for source in plan.sources)
    return Settings(max(1, n_cores) if arrays else 1, DEFAULT_BATCH_LOCAL, None)


# --------------------------------------------------------------------------- the pipeline


class Abort(Exception):
    """Stop the run (strict mode's first bad input, or the service gave up); the output is not written."""


class Reporter:
    """Lists bad inputs on standard error (without breaking the progress bar) and counts them."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.failed = 0

    def error(self, error: InputError) -> None:
        """Count and list one bad input; in strict mode, stop the run instead."""
        if self.strict:
            raise Abort(f"stopped at the first bad input (--strict): {error}; nothing was written")
        self.failed += 1
        if self.failed <= MAX_ERRORS_SHOWN:
            self.note(f"skipped {error}")
        elif self.failed == MAX_ERRORS_SHOWN + 1:
            self.note("(further bad inputs are not listed; the summary counts them)")

    @staticmethod
    def note(message: str) -> None:
        """One line on standard error, above the progress bar where one is drawn."""
        bars = sys.modules.get("tqdm")  # imported only where a bar is drawn (see progress_bar)
        if bars is not None:
            bars.tqdm.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int | None, desc: str | None) -> _NoBar | Any:
    """tqdm's bar on standard error when it is a terminal (and ``desc`` is not None), else a bar that draws
    nothing; tqdm is imported only then (its import is a few percent of a short run's start-up)."""
    if desc is None or not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="img", unit_scale=True, desc=desc, file=sys.stderr, dynamic_ncols=True,
                smoothing=0.05)


@dataclass
class Outcome:
    scored: int
    elapsed_s: float
    confusion: np.ndarray  # int64 [C, C], the labelled images only
    stages: StageClock


def queue_depth(batch_size: int) -> int:
    """Batches allowed to wait between two stages: QUEUE_DEPTH, or more small ones up to QUEUE_IMAGES images,
    so that a hiccup of one stage (a GIL switch, a descheduled thread) does not leave the next one idle."""
    return max(QUEUE_DEPTH, QUEUE_IMAGES // batch_size)


def score_inputs(
    plan: Plan,
    scorer: Scorer,
    options: ReadOptions,
    formatter: RowFormatter,
    out: Path | None,
    reporter: Reporter,
    progress: str | None = "scoring",
) -> Outcome:
    """Read, score and write every input; the stages overlap, each in its own thread:

        reading thread:  iter_batches -> scorer.prepare  (image files: decoded here or by worker processes)
        scoring thread:  scorer.map (ONNX Runtime in --threads inference threads, or HTTP requests)
        this thread:     output rows, confusion matrix, progress bar

    with a few batches waiting between two stages (``queue_depth``). Each stage's busy time is
    measured (``Outcome.stages``): at good settings inference is the only stage busy all the time.
    """
    clock = StageClock()

    def prepare(batch: Batch) -> Batch:
        start = time.perf_counter()
        batch = scorer.prepare(batch)
        clock.add("preprocess", time.perf_counter() - start)
        return batch

    @contextlib.contextmanager
    def results() -> Iterator[Iterator[Scored]]:
        batches = map(prepare, clock.timed(iter_batches(plan.sources, options), "read"))
        depth = queue_depth(options.batch_size)
        with Prefetcher(batches, depth=depth, name="digits-reader") as ready:
            waits = clock.timed(ready, "inference (waiting)")
            with Prefetcher(clock.timed(scorer.map(waits), "inference"), depth=depth,
                            name="digits-scorer") as scored:
                yield scored
        # the scoring thread's time includes its waits for the reader: keep its own work only
        clock.add("inference", -clock.busy.pop("inference (waiting)", 0.0))
        if isinstance(scorer, LocalScorer):
            # its inference threads timed their own runs: a truer figure than the scoring thread's waits
            # for them, which include waits for the GIL while the reading thread parses
            clock.busy["inference"] = scorer.busy_s / scorer.streams

    return write_results(results(), plan, formatter, out, reporter, progress, clock)


def write_results(
    results: AbstractContextManager[Iterator[Scored]],
    plan: Plan,
    formatter: RowFormatter,
    out: Path | None,
    reporter: Reporter,
    progress: str | None = "scoring",
    clock: StageClock | None = None,
) -> Outcome:
    """Write the rows of scored batches (in input order) to ``out``, report their bad inputs, count the
    confusion matrix and drive the progress bar; shared by every engine, so all write the same bytes."""
    clock = clock or StageClock()
    started = time.perf_counter()
    num_classes = len(formatter.labels)
    cm = np.zeros((num_classes, num_classes), np.int64)
    scored = 0
    bar = progress_bar(plan.total, progress)
    try:
        with results as stream, open_output(out) as write:
            write(formatter.header())
            for result in stream:
                start = time.perf_counter()
                for error in result.errors:
                    reporter.error(error)
                batch = result.batch
                if len(batch):
                    write(formatter.rows(batch.names, batch.positions, batch.labels, result.probabilities))
                    if batch.labels is not None:
                        known = batch.labels >= 0
                        predicted = result.probabilities[known].argmax(axis=1)
                        cm += confusion_matrix(batch.labels[known], predicted, num_classes)
                scored += len(batch)
                bar.update(batch.seen)
                clock.add("write", time.perf_counter() - start)
    finally:
        bar.close()
    return Outcome(scored, time.perf_counter() - started, cm, clock)


# --------------------------------------------------------------------------- the command


def main(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Abort as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader of standard output left (`digits score ... | head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's final flush of stdout must not fail again
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.plot is not None:
        try:
            require_matplotlib("--plot")
        except PlottingUnavailable as exc:
            raise UsageError(str(exc)) from None
    if args.read:
        from clients.reading import read_numbers

        return read_numbers(args)
    remote = args.url is not None
    if remote and args.engine != "local":
        raise UsageError(f"--url scores with a running service, --engine {args.engine} on its own workers: "
                         "choose one")
    reporter = Reporter(strict=args.strict)
    plan = plan_inputs(args.inputs, args.labels, args.folder_labels)
    for error in plan.errors:
        reporter.error(error)
    if not plan.sources:
        raise Abort("nothing to score: no usable input (see above)")
    settings = chosen_settings(args, plan, remote)
    threads, batch_size = settings.threads, settings.batch_size
    options = ReadOptions(batch_size=batch_size, decode=not remote, jobs=settings.jobs, strict=args.strict)
    progress = None if args.quiet else "scoring"

    if remote:
        from clients.remote import RemoteError, RemoteScorer, RetryPolicy

        client = RemoteScorer(
            args.url, model=args.model, concurrency=args.concurrency, timeout_s=args.timeout,
            policy=RetryPolicy(retries=args.retries, budget=args.retry_budget), api_key=args.api_key,
            on_retry=lambda message: reporter.note(f"service busy: {message}"),
        )
        try:
            try:
                name, version, labels = client.describe()
            except RemoteError as exc:
                raise UsageError(str(exc)) from None
            formatter = RowFormatter(args.format or default_format(args.out), labels)
            outcome = score_inputs(plan, client, options, formatter, args.out, reporter, progress)
        except RemoteError as exc:
            raise Abort(f"{exc}; nothing was written") from None
        finally:
            client.close()
        engine = f"{client.url}, {args.concurrency} requests at a time"
        if client.retried:
            engine += f", {client.retried} retries"
    elif args.engine == "ray":
        from clients import ray_engine

        ray_engine.import_ray()  # a usage error now, before anything is read, when Ray is not installed
        model = load_local_model(args.model, args.models_dir, device="cpu", threads=1, batch_size=1)
        name, version, labels = model.name, model.version, model.labels
        formatter = RowFormatter(args.format or default_format(args.out), labels)
        with ray_engine.ray_session() as ray:
            actors = args.actors or ray_engine.default_actors(int(ray.cluster_resources().get("CPU", 1)))
            ray_settings = ray_engine.RaySettings(actors=actors, threads=threads or 1, batch_size=batch_size)
            results = ray_engine.scored_batches(plan, options, model, ray_settings)
            outcome = write_results(results, plan, formatter, args.out, reporter, progress)
        engine = f"Ray Data, {actors} inference actor(s) of {threads or 1} ONNX Runtime thread(s)"
    else:
        streams = threads or usable_cores()
        model = load_local_model(args.model, args.models_dir, device=args.device, threads=1,
                                 batch_size=batch_size, spinning=False)
        name, version, labels = model.name, model.version, model.labels
        formatter = RowFormatter(args.format or default_format(args.out), labels)
        outcome = score_inputs(plan, LocalScorer(model, streams), options, formatter, args.out, reporter, progress)
        device = model.provider.removesuffix("ExecutionProvider")
        engine = f"ONNX Runtime on {device}, {streams} inference thread(s) of one ONNX Runtime thread each"

    _report(args, outcome, labels, title=f"{name} v{version}")
    rate = outcome.scored / outcome.elapsed_s if outcome.elapsed_s > 0 else 0.0
    summary = (f"scored {outcome.scored:,} images in {outcome.elapsed_s:.2f} s ({rate:,.0f} images/s) "
               f"with {name} v{version} ({engine})")
    if args.out is not None:
        summary += f"; wrote {args.out}"
    if reporter.failed:
        summary += f"; {reporter.failed:,} bad input(s) skipped (listed above)"
    print(summary, file=sys.stderr)
    if args.verbose:
        print(_verbose_report(settings, options, outcome, engine), file=sys.stderr)
    return 1 if reporter.failed else 0


def chosen_settings(args: argparse.Namespace, plan: Plan, remote: bool) -> Settings:
    """The command line's settings, each one left unset taken from ``default_settings``."""
    default = default_settings(plan, usable_cores(), remote, args.engine)
    threads = default.threads if args.threads is None else args.threads
    batch_size = default.batch_size if args.batch_size is None else args.batch_size
    return Settings(threads, batch_size, default.jobs if args.jobs is None else args.jobs)


def _verbose_report(settings: Settings, options: ReadOptions, outcome: Outcome, engine: str) -> str:
    jobs = "measured per image source" if settings.jobs is None else str(settings.jobs)
    lines = [f"settings: {usable_cores()} core(s) here; {engine}; batch {settings.batch_size}; decoding processes: "
             f"{jobs if engine.startswith('ONNX') else 'none here'}"]
    lines += options.notes
    lines.append(outcome.stages.summary(outcome.elapsed_s))
    return "\n".join(lines)


def _report(args: argparse.Namespace, outcome: Outcome, labels: list[str], title: str) -> None:
    """Accuracy, per-class precision and recall, the confusion matrix; and the --plot PNG."""
    cm = outcome.confusion
    labelled = int(cm.sum())
    if not labelled:
        if args.plot is not None:
            print("--plot: no input has labels, so there is no confusion matrix to plot", file=sys.stderr)
        return
    to = sys.stdout if args.out is not None else sys.stderr  # keep standard output for the rows
    if labelled < outcome.scored:
        print(f"{labelled:,} of the {outcome.scored:,} scored images have a label; the report covers those",
              file=to)
    print(format_report(cm, labels), file=to)
    if args.plot is not None:
        from core.plots import plot_confusion_matrix

        inputs = ", ".join(os.path.basename(i.rstrip("/")) for i in args.inputs)
        plot_confusion_matrix(cm, labels, args.plot, title=f"{title} on {inputs}"[:80])
        print(f"wrote {args.plot}", file=to)
