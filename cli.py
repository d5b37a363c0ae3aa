"""The `digits` command: one entry point, one subcommand per part of the project.

Each subcommand's module is imported only when that subcommand runs, so
`digits serve` and `digits score` never import torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from typing import Any

# subcommand -> (module, one-line help). Each module has add_arguments(parser) and main(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("training.train", "train an MLP or LeNet-5 and export it to ONNX"),
    "export": ("training.export", "export a training checkpoint to ONNX and update a manifest"),
    "serve": ("service.main", "run the inference service (FastAPI + ONNX Runtime)"),
    "score": ("clients.score", "score image folders, IDX files or Kaggle CSVs with a model"),
}


# subcommand -> the extra that installs what it imports, and the command that installs it.
EXTRAS: dict[str, tuple[str, str]] = {
    "train": ("train", "pip install -e '.[train]'"),
    "export": ("train", "pip install -e '.[train]'"),
    "serve": ("serve", "pip install -e '.[serve]'"),
    "score": ("serve", "pip install -e '.[serve]'"),
}
_OWN_PACKAGES = frozenset({"cli", "core", "training", "service", "clients"})


class MissingExtra(Exception):
    """A subcommand's dependencies are not installed; the message is the one line to show."""


def _import_command(name: str) -> Any:
    """The subcommand's module; ``MissingExtra`` naming the install command when a dependency is missing."""
    module = COMMANDS[name][0]
    try:
        loaded = importlib.import_module(module)
        # What the command imports only when it runs (to start fast) is needed all the same.
        for package in getattr(loaded, "REQUIRES", ()):
            if importlib.util.find_spec(package) is None:
                raise ModuleNotFoundError(f"No module named {package!r}", name=package)
        return loaded
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if not missing or missing in _OWN_PACKAGES:
            raise
        extra, install = EXTRAS[name]
        raise MissingExtra(
            f"digits {name} needs the {extra!r} extra ({missing} is not installed); install it with: {install}"
        ) from None


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digits",
        description="Handwritten digit recognition: train, export, serve and score models.",
        epilog="Run `digits COMMAND --help` for the options of each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
        # Only the chosen command's module is imported (its options need it).
        if name in argv:
            _import_command(name).add_arguments(p)
            p.set_defaults(module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser([chosen] if chosen in COMMANDS else [])
    except MissingExtra as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    return int(importlib.import_module(args.module).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
