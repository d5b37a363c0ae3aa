"""The README's table of shipped models, written from the manifest (never by hand).

`digits export --readme README.md` rewrites the lines between the two markers below after it
updates the manifest, so the figures people read are the ones the export measured.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.files import atomic_write

__all__ = ["BEGIN", "END", "models_table", "update_readme"]

BEGIN = "<!-- models table: written by `digits export --readme`, do not edit -->"
END = "<!-- end of models table -->"


def models_table(manifest: Mapping[str, Any]) -> str:
    """Markdown: one row per model of the manifest (default first), then how each was trained."""
    default = manifest.get("default_model")
    models = sorted(manifest["models"], key=lambda m: (m["name"] != default, m["name"]))
    lines = [
        "| model | architecture | parameters | test accuracy | file |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for entry in models:
        name = f"`{entry['name']}`" + (" (default)" if entry["name"] == default else "")
        accuracy = entry["metrics"]["test_accuracy"]
        lines.append(f"| {name} | {_architecture(entry)} | {entry['parameters']:,} | **{100 * accuracy:.2f} %** "
                     f"| {_size(entry['bytes'])} |")
    lines.append("")
    for entry in models:
        metrics = entry["metrics"]
        lines.append(f"* `{entry['name']}`: best of {metrics['epochs_run']} epochs at epoch {metrics['best_epoch']} "
                     f"({metrics['train_seconds'] / 60:.0f} min), trained with "
                     f"`{entry['training_command']}`")
    return "\n".join(lines)


def update_readme(readme: str | Path, manifest_path: str | Path) -> None:
    """Replace the README's models table with one written from the manifest."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme} has no models table to update: add the two lines\n{BEGIN}\n{END}\n"
                         "where the table belongs, then export again")
    manifest = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
    before, rest = text.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    with atomic_write(readme) as f:
        f.write(f"{before}{BEGIN}\n{models_table(manifest)}\n{END}{after}".encode())


def _architecture(entry: Mapping[str, Any]) -> str:
    args = entry["model_args"]
    if entry["architecture"] == "lenet5":
        parts = ["LeNet-5", args["activation"].replace("relu", "ReLU"), f"{args['pooling']} pooling"]
    else:
        sizes = "-".join(str(n) for n in [784, *args["hidden"], args["num_classes"]])
        parts = [sizes, args["activation"].replace("relu", "ReLU")] + (["batch norm"] if args.get("batch_norm") else [])
    return ", ".join([*parts, f"dropout {args['dropout']}"])


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1e3:.0f} kB"
