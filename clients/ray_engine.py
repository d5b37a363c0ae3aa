"""`digits score --engine ray`: the same inputs, preprocessing, model and output as the local engine, on Ray Data.

    image files --read_binary_files--> bytes --map_batches(decode_images, tasks)--> pixels ─┐
    IDX / CSV   --the local engine's readers, on the driver--> blocks of pixels ────────────┼─>
        map_batches(Predictor, actors: one ONNX Runtime session each) --> probabilities, in input order
        --> the local engine's writer (clients.score.write_results): rows, report, progress bar

Image files are read by Ray Data's binary-file reader on the workers (so they must be on storage every
node can read: a shared file system, or a cloud bucket path) and decoded in Ray tasks by
``clients.sources.decode_blobs``, the local engine's preprocessing. IDX files and Kaggle CSVs are parsed
on the driver by the local engine's readers: they report a corrupt IDX file or a malformed CSV row by its
path and line, where Ray's CSV reader would stop at the first bad row or skip it silently; a file's pixels
are put in Ray's object store, a block per batch, before its scoring starts. The model is verified on the
driver (checksum, contract) and its bytes are shipped with the actors, so workers need no copy of models/.

Ray runs with the order of the input kept (``preserve_order``), so results come back in input order and
every row, bad-input report and confusion matrix is the local engine's. Ray's own progress bars are
switched off: the local engine's bar counts the rows as they are written.

Only this module imports Ray, and only when the engine runs (`pip install -e '.[distributed]'`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clients.batches import Batch, InputError, Scored
from clients.sources import (
    ImageFiles,
    Plan,
    ReadOptions,
    Source,
    UsageError,
    decode_blobs,
    folder_label,
    read_source,
)
from core.machine import usable_cores

if TYPE_CHECKING:
    from service.runtime import LoadedModel

PROBABILITIES = "probabilities"


@dataclass(frozen=True)
class RaySettings:
    actors: int  # inference actors, each with one ONNX Runtime session
    threads: int  # ONNX Runtime intra-op threads per actor
    batch_size: int  # images per inference call in an actor
    max_pixels: int | None = None  # None: the preprocessing's default limit


def default_actors(cluster_cpus: int) -> int:
    """One inference actor per 2 CPUs of the cluster (at least 1): the other half decodes image files,
    reads blocks and runs Ray's own processes."""
    return max(1, cluster_cpus // 2)


def import_ray() -> Any:
    """Ray, or a usage error that says how to install it."""
    try:
        import ray
        import ray.data  # Ray Data is an extra of Ray: fail here, not half-way
    except ImportError:
        raise UsageError(
            "--engine ray needs Ray Data: pip install -e '.[distributed]' (or pip install 'ray[data]')"
        ) from None
    return ray


@contextlib.contextmanager
def ray_session() -> Iterator[Any]:
    """Ray for one run: the running instance if this process has one; else the cluster at $RAY_ADDRESS;
    else a local instance sized to this machine, shut down at the end."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    for name in ("ray", "ray.data"):  # Ray's notes on its own workings would break into the output on stderr
        logging.getLogger(name).setLevel(logging.ERROR)
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
             "configure_logging": False}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**quiet)  # joins the cluster named by RAY_ADDRESS
    else:
        ray.init(num_cpus=usable_cores(), **quiet)
    try:
        yield ray
    finally:
        ray.shutdown()


class Predictor:
    """A Ray Data actor: one ONNX Runtime session from the verified model bytes, run a batch at a time."""

    def __init__(self, model_bytes: bytes, threads: int, keep: tuple[str, ...] = ()) -> None:
        import onnxruntime as ort

        from service.runtime import CPU, INPUT_NAME, OUTPUT_NAMES, session_options

        self._session = ort.InferenceSession(model_bytes, session_options(threads, spinning=False),
                                             providers=[CPU])
        self._input = INPUT_NAME
        self._output = OUTPUT_NAMES[1]  # probabilities
        self._keep = keep  # input columns passed through beside the probabilities

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = batch["pixels"]  # uint8 or float32 [k, 28, 28]
        x = pixels.astype(np.float32, copy=False).reshape(-1, 1, 28, 28)
        (probabilities,) = self._session.run([self._output], {self._input: x})
        return {PROBABILITIES: probabilities, **{column: batch[column] for column in self._keep}}


def decode_images(batch: dict[str, np.ndarray], max_pixels: int | None) -> dict[str, np.ndarray]:
    """A Ray Data task: encoded files -> MNIST-style float32 [k, 28, 28] (zeros where a file fails) and the
    reason each failed file failed ("" for the good ones)."""
    blobs = list(batch["bytes"])
    decoded, good, bad = decode_blobs(blobs, max_pixels)
    pixels = np.zeros((len(blobs), 28, 28), np.float32)
    pixels[good] = decoded
    reasons = np.full(len(blobs), "", dtype=object)
    for i, reason in bad:
        reasons[i] = reason
    return {"pixels": pixels, "reason": reasons}


def _configure_ray_data(ray: Any) -> None:
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # results in input order
    context.enable_progress_bars = False  # one progress bar: the writer's
    for name in ("enable_operator_progress_bars", "enable_rich_progress_bars", "print_on_execution_start",
                 "enable_auto_log_stats"):
        if hasattr(context, name):
            setattr(context, name, False)


@contextlib.contextmanager
def scored_batches(plan: Plan, options: ReadOptions, model: LoadedModel,
                   settings: RaySettings) -> Iterator[Iterator[Scored]]:
    """Every input's ``Scored`` batches in input order, scored by Ray Data (a context: Ray runs within it)."""
    with ray_session() as ray:
        _configure_ray_data(ray)
        # the actors get the model's bytes with their constructor: workers need no models/ folder
        model_bytes = model.path.read_bytes()
        if hashlib.sha256(model_bytes).hexdigest() != model.sha256:
            raise UsageError(f"{model.path} changed while it was being loaded; run the command again")
        yield _stream(ray, plan, options, model_bytes, settings)


def _stream(ray: Any, plan: Plan, options: ReadOptions, model_bytes: bytes, settings: RaySettings) -> Iterator[Scored]:
    offset = 0
    for source in plan.sources:
        if isinstance(source, ImageFiles):
            yield from _score_images(ray, source, offset, model_bytes, settings)
            offset += source.count
        else:
            offset = yield from _score_arrays(ray, source, offset, options, model_bytes, settings)


# Ray Data keeps a map actor's constructor arguments (here the model bytes) in the object store and by default
# restarts a dead actor, which Ray warns could fail once they are gone: an actor that dies fails the run with
# its error instead. (Ray 2.64 drops this keyword for a named parameter; pyproject keeps ray below 2.64.)
_NO_RESTARTS = {"max_restarts": 0}


def _predict(ray: Any, dataset: Any, model_bytes: bytes, settings: RaySettings, keep: tuple[str, ...] = ()) -> Any:
    """Probabilities (and the columns ``keep``) by a pool of ``settings.actors`` Predictor actors."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        return _map_predictor(ray, dataset, model_bytes, settings, keep)


def _map_predictor(ray: Any, dataset: Any, model_bytes: bytes, settings: RaySettings, keep: tuple[str, ...]) -> Any:
    return dataset.map_batches(
        Predictor,
        fn_constructor_kwargs={"model_bytes": model_bytes, "threads": settings.threads, "keep": keep},
        batch_size=settings.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=settings.actors),
        num_cpus=settings.threads,
        **_NO_RESTARTS,
    )


def _rows(dataset: Any, columns: tuple[str, ...]) -> Iterator[dict[str, np.ndarray]]:
    yield from dataset.select_columns(list(columns)).iter_batches(batch_size=None, batch_format="numpy")


def _score_arrays(ray: Any, source: Source, offset: int, options: ReadOptions, model_bytes: bytes,
                  settings: RaySettings) -> Generator[Scored, None, int]:
    """IDX / CSV: read on the driver by the local engine's reader, scored by the actors, re-cut into the
    reader's batches (which carry the names, positions, labels and bad rows). Returns the next offset."""
    reader = read_source(source, offset, options)
    batches: list[Batch] = []
    refs = []
    while True:
        try:
            batch = next(reader)
        except StopIteration as stop:
            end = offset + stop.value
            break
        if len(batch):
            refs.append(ray.put(batch.pixels))
        batch.pixels = None
        batches.append(batch)
    rows = _Rows(iter(()))
    if refs:
        dataset = ray.data.from_numpy_refs(refs).rename_columns({"data": "pixels"})
        rows = _Rows(_rows(_predict(ray, dataset, model_bytes, settings), (PROBABILITIES,)))
    for batch in batches:
        probabilities = rows.take(len(batch)) if len(batch) else np.empty((0, 0), np.float32)
        yield Scored(batch, probabilities, batch.errors)
    return end


class _Rows:
    """Rows of probabilities as Ray hands them out (blocks of any size), taken n at a time."""

    def __init__(self, blocks: Iterator[dict[str, np.ndarray]]) -> None:
        self._blocks = blocks
        self._waiting: list[np.ndarray] = []
        self._count = 0

    def take(self, n: int) -> np.ndarray:
        while self._count < n:
            block = next(self._blocks)[PROBABILITIES]
            self._waiting.append(block)
            self._count += len(block)
        rows = np.concatenate(self._waiting) if len(self._waiting) > 1 else self._waiting[0]
        taken, rest = rows[:n], rows[n:]
        self._waiting, self._count = ([rest] if len(rest) else []), len(rest)
        return taken


def _score_images(ray: Any, source: ImageFiles, offset: int, model_bytes: bytes,
                  settings: RaySettings) -> Iterator[Scored]:
    """Image files: Ray reads and decodes them; the driver names, numbers and labels them in order."""
    paths = list(source.paths)
    # absolute: Ray's workers do not share the driver's working directory
    dataset = ray.data.read_binary_files([os.path.abspath(p) for p in paths], include_paths=False)
    decoded = dataset.map_batches(decode_images, fn_kwargs={"max_pixels": settings.max_pixels},
                                  batch_format="numpy", batch_size=64)
    scored = _predict(ray, decoded, model_bytes, settings, keep=("reason",))
    done = 0
    for result in _rows(scored, (PROBABILITIES, "reason")):
        reasons = result["reason"]
        k = len(reasons)
        ok = np.flatnonzero(reasons == "")
        indices = (done + ok).tolist()
        errors = [InputError(paths[done + i], str(reasons[i])) for i in np.flatnonzero(reasons != "").tolist()]
        labels = None
        if source.folder_labels:
            labels = np.fromiter((folder_label(paths[i]) for i in indices), np.int64, len(indices))
        batch = Batch([paths[i] for i in indices], np.asarray(indices, np.int64) + offset + 1, labels,
                      errors=errors, seen=k)
        yield Scored(batch, result[PROBABILITIES][ok], errors)
        done += k
    if done != len(paths):
        raise RuntimeError(f"Ray returned {done} results for {len(paths)} image files")
