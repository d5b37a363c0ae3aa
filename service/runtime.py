"""ONNX Runtime sessions: read the manifest, verify each model file, load it, warm it up, run it.

The batch scorer uses this module in-process too, so a model is loaded and checked
the same way wherever it runs. No torch here.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from core.contract import IMAGE_SHAPE, INPUT_NAME, OUTPUT_NAMES
from core.files import file_digest

log = logging.getLogger(__name__)

# ONNX Runtime's own error types share no base class but Exception; these are the ones a bad file raises.
_ORT_ERRORS: tuple[type[Exception], ...] = (
    *(getattr(ort.capi.onnxruntime_pybind11_state, name)
      for name in ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
                   "InvalidProtobuf", "NotImplemented", "InvalidGraph", "EPFail")
      if hasattr(ort.capi.onnxruntime_pybind11_state, name)),
    RuntimeError,
)
REPO_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"  # the shipped models
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class ModelError(Exception):
    """A model cannot be served; the message says which file and what to do."""


class DeviceError(ModelError):
    """The requested device cannot be used."""


# cuDNN's default "EXHAUSTIVE" search benchmarks every convolution algorithm for each new input shape; with
# dynamic batching every batch size is a new shape, so requests would pay tens of milliseconds of search the
# first time each size occurs (seen on an H200: 64 clients at 70 ms p50). The heuristic choice costs nothing.
CUDA_OPTIONS: dict[str, str] = {"cudnn_conv_algo_search": "HEURISTIC"}


def _with_options(providers: list[str]) -> list[str | tuple[str, dict[str, str]]]:
    return [(p, CUDA_OPTIONS) if p == CUDA else p for p in providers]


def select_providers(device: str) -> list[str]:
    """Execution providers for ``device`` (auto, cpu, cuda), failing fast when CUDA is demanded but absent."""
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if device not in ("auto", "cuda"):
        raise ValueError(f"unknown device {device!r}; choose auto, cpu or cuda")
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise DeviceError(
            "--device cuda: this onnxruntime build has no CUDA execution provider "
            f"(available: {', '.join(available)}). Install the GPU build: "
            "pip uninstall -y onnxruntime && pip install -e '.[serve,gpu]', or use --device cpu."
        )
    return [CPU]  # the service logs the notice once, where it loads the models


@dataclass(frozen=True)
class ManifestEntry:
    name: str
    file: Path  # absolute
    sha256: str
    version: str
    raw: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Manifest:
    path: Path
    default_model: str | None
    entries: tuple[ManifestEntry, ...]


def read_manifest(models_dir: str | Path) -> Manifest:
    """Parse ``models_dir/manifest.json``; file paths in it are relative to it."""
    path = Path(models_dir) / "manifest.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(
            f"no manifest at {path}: point DIGITS_MODELS_DIR (or --models-dir) at a folder holding "
            "manifest.json and the .onnx files, such as the repository's models/"
        ) from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path} is not valid JSON ({exc}); restore it from the repository") from None
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, list) or not all(isinstance(item, dict) for item in models):
        raise ModelError(f'{path} is not a manifest: expected {{"models": [{{"name", "file", "sha256"}}, ...]}}; '
                         "restore it from the repository or re-export with `digits export --manifest`")
    entries = []
    for i, item in enumerate(models):
        try:
            entries.append(
                ManifestEntry(
                    name=str(item["name"]),
                    file=(path.parent / item["file"]).resolve(),
                    sha256=str(item["sha256"]).removeprefix("sha256:"),
                    version=str(item.get("version", "1")),
                    raw=item,
                )
            )
        except KeyError as exc:
            raise ModelError(f"{path}: model #{i} lacks the field {exc}") from None
        except TypeError as exc:  # e.g. a number where the file name should be
            raise ModelError(f"{path}: model #{i} has a field of the wrong type ({exc})") from None
    if not entries:
        raise ModelError(f"{path} lists no models")
    return Manifest(path, doc.get("default_model"), tuple(entries))


def _decode_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """ONNX metadata values are strings; those written as JSON are decoded."""
    out: dict[str, Any] = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value) if value[:1] in "[{" else value
        except json.JSONDecodeError:
            out[key] = value
    return out


@dataclass
class LoadedModel:
    """One verified model and its ONNX Runtime session."""

    name: str
    version: str
    path: Path
    sha256: str
    session: ort.InferenceSession = field(repr=False)
    metadata: dict[str, Any]
    labels: list[str]
    num_classes: int
    provider: str
    manifest: Mapping[str, Any] = field(default_factory=dict, repr=False)
    loaded_at: float = field(default_factory=time.time)

    def run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, probabilities), each float32 [N, C], for float32 pixels [N, 1, 28, 28] on 0..255."""
        logits, probabilities = self.session.run(OUTPUT_NAMES, {INPUT_NAME: pixels})
        if len(logits) != len(pixels) or len(probabilities) != len(pixels):
            raise RuntimeError(f"model {self.name} returned {len(logits)} results for {len(pixels)} images")
        return logits, probabilities

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "architecture": self.metadata.get("architecture"),
            "parameters": _count(self.metadata.get("parameters")),  # ONNX metadata holds it as a string
            "dataset": self.metadata.get("dataset"),
            "metrics": self.metadata.get("metrics", {}),
            "labels": self.labels,
            "input": self.metadata.get("input_spec"),
            "device": self.provider,
            "sha256": self.sha256,
            "created": self.metadata.get("created"),
        }


def _count(value: Any) -> int | None:
    """An integer count from metadata ("61706" -> 61706); None when absent or not a count."""
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _check_signature(session: ort.InferenceSession, path: Path) -> int:
    """Verify the serving contract; returns the number of classes."""
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME or inputs[0].type != "tensor(float)":
        found = [(i.name, i.type, i.shape) for i in inputs]
        raise ModelError(f"{path}: inputs are {found}; expected one float32 input named {INPUT_NAME!r}")
    shape = inputs[0].shape
    if len(shape) != 4 or list(shape[1:]) != list(IMAGE_SHAPE) or isinstance(shape[0], int):
        raise ModelError(f"{path}: input shape is {shape}; expected [N, 1, 28, 28] with a dynamic batch N")
    outputs = {o.name: o for o in session.get_outputs()}
    missing = [n for n in OUTPUT_NAMES if n not in outputs]
    if missing:
        raise ModelError(f"{path}: missing outputs {missing}; found {sorted(outputs)}")
    sizes = {outputs[n].shape[-1] for n in OUTPUT_NAMES}
    if len(sizes) != 1 or not isinstance(next(iter(sizes)), int):
        found = [outputs[n].shape for n in OUTPUT_NAMES]
        raise ModelError(f"{path}: outputs must both be [N, C] with a fixed C; found {found}")
    return int(next(iter(sizes)))


def session_options(intra_op_threads: int, spinning: bool = True) -> ort.SessionOptions:
    """``spinning=False``: idle intra-op threads sleep instead of spinning, leaving the cores to other
    work of the same process (the batch scorer's reading and writing threads, its decoding processes)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def load_model(
    path: str | Path,
    *,
    name: str | None = None,
    expected_sha256: str | None = None,
    version: str | None = None,
    providers: list[str] | None = None,
    intra_op_threads: int = 1,
    warmup_batch_sizes: tuple[int, ...] = (1, 64),
    manifest: Mapping[str, Any] | None = None,
    spinning: bool = True,
) -> LoadedModel:
    """Verify and load one ONNX file, then warm it up at the given batch sizes."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} not found; check the manifest's 'file' entry and the models folder")
    digest = file_digest(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ModelError(
            f"{path}: SHA-256 is {digest} but the manifest says {expected_sha256}; the file is corrupt or was "
            "replaced without updating manifest.json (re-export it with `digits export --manifest ...`)"
        )
    providers = providers or [CPU]
    try:
        session = ort.InferenceSession(str(path), session_options(intra_op_threads, spinning),
                                       providers=_with_options(providers))
    except _ORT_ERRORS as exc:
        raise ModelError(f"{path}: ONNX Runtime cannot load it: {exc}") from None
    if providers[0] == CUDA and session.get_providers()[0] != CUDA:
        raise DeviceError(
            f"{path}: the CUDA execution provider is installed but could not start (no usable GPU or driver/CUDA "
            "mismatch); use --device cpu or fix the CUDA install"
        )
    num_classes = _check_signature(session, path)
    metadata = _decode_metadata(session.get_modelmeta().custom_metadata_map)
    labels = [str(x) for x in metadata.get("labels", range(num_classes))]
    model = LoadedModel(
        name=name or str(metadata.get("name", path.stem)),
        version=version or str(metadata.get("version", "1")),
        path=path,
        sha256=digest,
        session=session,
        metadata=metadata,
        labels=labels,
        num_classes=num_classes,
        provider=session.get_providers()[0],
        manifest=dict(manifest or {}),
    )
    try:
        for n in warmup_batch_sizes:
            model.run(np.zeros((n, 1, 28, 28), np.float32))
    except _ORT_ERRORS as exc:
        raise ModelError(f"{path}: the model fails when run (warm-up at batch {n}): {exc}") from None
    return model


def load_manifest_models(
    models_dir: str | Path,
    *,
    providers: list[str],
    intra_op_threads: int = 1,
    warmup_batch_sizes: tuple[int, ...] = (1, 64),
) -> tuple[Manifest, dict[str, LoadedModel], dict[str, str]]:
    """Load every model in the manifest. Returns (manifest, loaded models, failures: name -> reason)."""
    manifest = read_manifest(models_dir)
    loaded: dict[str, LoadedModel] = {}
    failed: dict[str, str] = {}
    for entry in manifest.entries:
        try:
            loaded[entry.name] = load_model(
                entry.file,
                name=entry.name,
                expected_sha256=entry.sha256,
                version=entry.version,
                providers=providers,
                intra_op_threads=intra_op_threads,
                warmup_batch_sizes=warmup_batch_sizes,
                manifest=entry.raw,
            )
            log.info("model %s v%s loaded from %s on %s", entry.name, entry.version, entry.file,
                     loaded[entry.name].provider)
        except DeviceError:
            raise
        except ModelError as exc:
            failed[entry.name] = str(exc)
            log.error("model %s NOT loaded: %s", entry.name, exc)
    return manifest, loaded, failed
