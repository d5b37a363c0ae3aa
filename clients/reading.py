"""``digits score --read``: the number written in each image file, in-process or with a running
service (``--url``, POST /read). One row per image: csv ``input,text,confidence,boxes`` (boxes as
``x y width height`` per digit, ``;``-separated) or jsonl with each digit's prediction and box.
Only image files hold numbers: IDX and CSV inputs are refused."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from clients.outputs import default_format, open_output
from clients.sources import ImageFiles, UsageError, plan_inputs


def read_numbers(args: argparse.Namespace) -> int:
    """Read every image file of ``args.inputs`` as a number and write the rows; 1 if any was refused."""
    fmt = args.format or default_format(args.out)
    if fmt not in ("csv", "jsonl"):
        raise UsageError(f"--read writes csv or jsonl, not {fmt}")
    plan = plan_inputs(args.inputs, [], False)
    failed = 0
    for error in plan.errors:
        print(f"skipped {error.where}: {error.reason}", file=sys.stderr)
        failed += 1
    paths: list[str] = []
    for source in plan.sources:
        if not isinstance(source, ImageFiles):
            raise UsageError(f"--read reads numbers in image files; {source.path} is not one")
        paths += source.paths
    read = _remote_reader(args) if args.url else _local_reader(args)
    with open_output(args.out) as write:
        if fmt == "csv":
            write("input,text,confidence,boxes\n")
        for path in paths:
            try:
                reading = read(path, Path(path).read_bytes())
            except (OSError, ValueError) as exc:
                print(f"skipped {path}: {exc}", file=sys.stderr)
                failed += 1
                continue
            write(_csv_row(path, reading) if fmt == "csv" else orjson.dumps({"input": path, **reading}).decode() + "\n")
    print(f"read {len(paths):,} image(s) as numbers" + (f"; wrote {args.out}" if args.out else "")
          + (f"; {failed:,} skipped (listed above)" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def _csv_row(path: str, reading: dict[str, Any]) -> str:
    boxes = ";".join(" ".join(str(d["box"][k]) for k in ("x", "y", "width", "height")) for d in reading["digits"])
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([path, reading["text"], f"{reading['confidence']:.6f}", boxes])
    return out.getvalue()


def _local_reader(args: argparse.Namespace) -> Any:
    from clients.score import load_local_model
    from service import imaging

    model = load_local_model(args.model, args.models_dir, device=args.device, threads=args.threads or 1)

    def read(path: str, data: bytes) -> dict[str, Any]:
        digits = imaging.read_number_bytes(data)  # ImagingError is a ValueError: the file is skipped
        _, probabilities = model.run(np.stack([d.pixels for d in digits])[:, None])
        predicted = probabilities.argmax(axis=1)
        confidences = probabilities[np.arange(len(digits)), predicted]
        return {
            "text": "".join(model.labels[d] for d in predicted.tolist()),
            "confidence": float(np.prod(confidences, dtype=np.float64)),
            "digits": [{"digit": int(d), "confidence": float(c),
                        "box": dict(zip(("x", "y", "width", "height"), digit.box, strict=True))}
                       for d, c, digit in zip(predicted.tolist(), confidences.tolist(), digits, strict=True)],
        }

    return read


def _remote_reader(args: argparse.Namespace) -> Any:
    from clients.remote import RemoteScorer

    client = RemoteScorer(args.url, model=args.model, timeout_s=args.timeout, api_key=args.api_key)

    def read(path: str, data: bytes) -> dict[str, Any]:
        reading, refused = client.read(path, data)
        if reading is None:
            raise ValueError(refused)
        return {"text": reading["text"], "confidence": reading["confidence"],
                "digits": [{"digit": d["digit"], "confidence": d["confidence"], "box": d["box"]}
                           for d in reading["digits"]]}

    return read
