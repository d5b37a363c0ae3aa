"""Checkpoint -> one self-contained ONNX file, with its metadata, a parity check and a manifest entry.

The exported graph is the serving contract:
    input  ``pixels``        float32 [N, 1, 28, 28], raw 0..255, white ink on black
    output ``logits``        float32 [N, C]
    output ``probabilities`` float32 [N, C] (softmax of the logits)
Normalisation is the network's first layer, so it is inside the graph.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.contract import IMAGE_SHAPE, INPUT_NAME, INPUT_SPEC, OUTPUT_NAMES
from core.files import atomic_write, file_digest
from training import nets
from training.checkpoint import Checkpoint

log = logging.getLogger(__name__)

OPSET = 18
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = REPO_ROOT / "models" / "manifest.json"


class _WithProbabilities(nn.Module):
    """Adds the softmax output next to the logits, for export."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(pixels)  # (N, C)
        return logits, torch.softmax(logits, dim=1)


def export_onnx(net: nn.Module, path: str | Path, metadata: Mapping[str, Any]) -> Path:
    """Export ``net`` to a single ONNX file with a dynamic batch dimension and ``metadata`` props.

    Metadata values that are not strings are stored as JSON.
    """
    import onnx

    path = Path(path)
    wrapper = _WithProbabilities(net).eval()
    example = torch.zeros(2, *IMAGE_SHAPE)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        raw = Path(tmp) / "model.onnx"
        # The dynamo exporter fixes the batch at the example's size unless it is declared dynamic,
        # and writes a side .data file unless external_data=False.
        torch.onnx.export(
            wrapper,
            (example,),
            str(raw),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"pixels": {0: torch.export.Dim("batch")}},
            external_data=False,
            opset_version=OPSET,
            verbose=False,
        )
        model = onnx.load(str(raw))
    # The exporter annotates every node with debugging metadata, among it the Python stack trace
    # of the export (file paths of the machine that ran it): none of it belongs in a shipped model.
    for node in model.graph.node:
        del node.metadata_props[:]
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        del value.metadata_props[:]
    description = nets.ARCHITECTURES[metadata["architecture"]].description
    model.graph.doc_string = f"digits {metadata.get('name', '')}: {description}"
    model.producer_name = "digits"
    model.model_version = int(metadata.get("version", 1))
    del model.metadata_props[:]
    for key, value in metadata.items():
        prop = model.metadata_props.add()
        prop.key = key
        prop.value = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    onnx.checker.check_model(model, full_check=True)
    _check_signature(model)
    with atomic_write(path) as f:
        f.write(model.SerializeToString())
    return path


def _check_signature(model: Any) -> None:
    inputs = [(i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]) for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if len(inputs) != 1 or inputs[0][0] != INPUT_NAME or inputs[0][1][1:] != list(IMAGE_SHAPE):
        raise RuntimeError(f"exported graph has inputs {inputs}; expected one {INPUT_NAME!r} [N,1,28,28]")
    if not isinstance(inputs[0][1][0], str):
        raise RuntimeError(f"exported graph has a fixed batch size {inputs[0][1][0]}; expected a dynamic one")
    if tuple(outputs) != OUTPUT_NAMES:
        raise RuntimeError(f"exported graph has outputs {outputs}; expected {list(OUTPUT_NAMES)}")


@dataclass(frozen=True)
class ParityReport:
    images: int
    argmax_agreement: float  # fraction of images where torch and ONNX Runtime pick the same class
    max_prob_diff: float  # largest absolute difference between the two probability arrays

    @property
    def ok(self) -> bool:
        return self.argmax_agreement == 1.0 and self.max_prob_diff <= 1e-4

    def __str__(self) -> str:
        return (
            f"parity on {self.images} images: argmax agreement {self.argmax_agreement:.2%}, "
            f"max |Δprobability| {self.max_prob_diff:.2e}"
        )


def check_parity(net: nn.Module, onnx_path: str | Path, images: np.ndarray) -> ParityReport:
    """Run PyTorch and ONNX Runtime on the same raw uint8 images ``[N,28,28]`` and compare."""
    import onnxruntime as ort

    x = np.ascontiguousarray(images, dtype=np.float32).reshape(-1, *IMAGE_SHAPE)
    with torch.no_grad():
        expected = torch.softmax(net.eval()(torch.from_numpy(x)), dim=1).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {INPUT_NAME: x})[0]
    agreement = float(np.mean(expected.argmax(1) == got.argmax(1)))
    return ParityReport(len(x), agreement, float(np.abs(expected - got).max()))


def sha256_of(path: str | Path) -> str:
    """The SHA-256 of a file as hex, as recorded in the manifest."""
    return file_digest(path, "sha256")


def update_manifest(
    manifest_path: str | Path, onnx_path: str | Path, metadata: Mapping[str, Any], *, make_default: bool = False
) -> dict:
    """Add or replace the model's entry in ``manifest.json`` (file path relative to the manifest)."""
    manifest_path = Path(manifest_path)
    onnx_path = Path(onnx_path)
    manifest: dict[str, Any] = {"format": 1, "default_model": None, "models": []}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
    entry = {
        "name": metadata["name"],
        "file": os.path.relpath(onnx_path.resolve(), manifest_path.resolve().parent),
        "sha256": sha256_of(onnx_path),
        "bytes": onnx_path.stat().st_size,
        "version": str(metadata.get("version", "1")),
        "architecture": metadata["architecture"],
        "model_args": metadata.get("model_args", {}),
        "parameters": metadata.get("parameters"),
        "dataset": metadata.get("dataset"),
        "train_data_sha256": metadata.get("train_data_sha256"),
        "metrics": metadata.get("metrics", {}),
        "input": INPUT_SPEC,
        "outputs": {name: {"dtype": "float32", "shape": ["N", len(metadata["labels"])]} for name in OUTPUT_NAMES},
        "labels": list(metadata["labels"]),
        "created": metadata.get("created"),
        "training_command": metadata.get("training_command"),
    }
    models = [m for m in manifest.get("models", []) if m["name"] != entry["name"]]
    models.append(entry)
    manifest["models"] = sorted(models, key=lambda m: m["name"])
    if make_default or manifest.get("default_model") not in {m["name"] for m in models}:
        manifest["default_model"] = entry["name"]
    with atomic_write(manifest_path) as f:
        f.write((json.dumps(manifest, indent=2) + "\n").encode())
    return entry


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network stored in a best.pt written by ``digits train`` (or a run directory): (net, info)."""
    checkpoint = Checkpoint.load(path)
    return checkpoint.build(), checkpoint.info


def build_metadata(net: nn.Module, info: Mapping[str, Any], name: str, version: str) -> dict[str, Any]:
    """Everything a reader of the ONNX file needs to know about it, from the training run's info."""
    return {
        "name": name,
        "version": version,
        "architecture": info["arch"],
        "model_args": nets.model_args(net),
        "parameters": nets.count_parameters(net),
        "dataset": info.get("dataset"),
        "train_data_sha256": info.get("train_data_sha256"),
        "metrics": info.get("metrics", {}),
        "labels": list(info.get("class_names", [str(i) for i in range(10)])),
        "input_spec": INPUT_SPEC,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "training_command": info.get("training_command", ""),
        "framework": f"torch {torch.__version__}",
    }


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    version: str = "1",
    manifest: str | Path | None = None,
    parity_images: np.ndarray | None = None,
    make_default: bool = False,
) -> tuple[Path, ParityReport | None]:
    """The whole export: rebuild, write ONNX with metadata, check parity, update the manifest."""
    net, info = load_checkpoint(checkpoint)
    name = name or info.get("name") or info["arch"]
    metadata = build_metadata(net, info, name, version)
    out = export_onnx(net, out, metadata)
    report = None
    if parity_images is not None:
        report = check_parity(net, out, parity_images)
        log.info("%s", report)
        if not report.ok:
            raise RuntimeError(f"ONNX export of {name} disagrees with PyTorch: {report}")
    if manifest is not None:
        update_manifest(manifest, out, metadata, make_default=make_default)
        log.info("manifest %s updated with %s", manifest, name)
    return out, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="a run directory written by `digits train`, or its best.pt")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write (one self-contained file)")
    parser.add_argument("--name", help="model name in metadata and manifest (default: the checkpoint's name)")
    parser.add_argument("--version", default="1", help="model version recorded in metadata (default: %(default)s)")
    parser.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="manifest.json to add the model to (default: none; the shipped one is models/manifest.json)",
    )
    parser.add_argument("--default", action="store_true",
                        help="make this model the manifest's default (the first model added is the default)")
    parser.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="README whose models table to rewrite from the manifest after the export (needs --manifest; "
        "the shipped one is README.md; default: leave READMEs alone)",
    )
    parser.add_argument(
        "--parity-data",
        type=Path,
        default=None,
        help="directory with MNIST IDX test files: check PyTorch/ONNX Runtime parity on 1,000 of them "
        "(default: skip the check)",
    )


def main(args: argparse.Namespace) -> int:
    from training import download, model_table

    if args.readme is not None and args.manifest is None:
        raise SystemExit("digits export: --readme writes the models table from the manifest: give --manifest too")
    images = None
    if args.parity_data is not None:
        images, _ = download.load_split("mnist", "test", args.parity_data, verify=False, download_missing=False)
        images = images[:1000]
    out, report = export_checkpoint(
        args.checkpoint, args.out, name=args.name, version=args.version, manifest=args.manifest, parity_images=images,
        make_default=args.default,
    )
    print(f"wrote {out} ({out.stat().st_size:,} bytes, sha256 {sha256_of(out)})")
    if args.readme is not None:
        model_table.update_readme(args.readme, args.manifest)
        print(f"rewrote the models table of {args.readme} from {args.manifest}")
    if report is not None:
        print(report)
    return 0
