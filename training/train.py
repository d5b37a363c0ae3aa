"""`digits train`: train an MLP or LeNet-5 on MNIST, Fashion-MNIST or a Kaggle CSV, then export to ONNX.

A run directory holds everything about one run:
    config.json        every option, the command line, versions
    metrics.csv/.json  one row per epoch (loss, accuracy, learning rate, time)
    curves.png         training curves; confusion.png: confusion matrix on the test split
    best.pt / last.pt  best checkpoint (by validation accuracy) / resumable state
    results.json       final test accuracy and more
    <name>.onnx        the exported model
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import logging
import math
import operator
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from core.files import DataError
from core.kaggle import read_kaggle_csv, write_kaggle_submission
from core.metrics import class_report, confusion_matrix, format_report
from training import nets
from training.checkpoint import Checkpoint, RunState
from training.data import Data, Split, load_data

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "onecycle")
DRY_RUN_BATCHES = 3


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Small random affine distortions (rotation ±10°, scale 0.9-1.1, shear ±0.15, shift ±2 px)."""
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (hi - lo) + lo

    angle = uniform(-10, 10) * math.pi / 180
    scale = uniform(0.9, 1.1)
    shear = uniform(-0.15, 0.15)
    tx, ty = uniform(-2 / 14, 2 / 14), uniform(-2 / 14, 2 / 14)  # grid units: 14 px = 1.0
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin + shear * cos, tx], 1), torch.stack([sin, cos + shear * sin, ty], 1)], 1
    )  # (N, 2, 3): output -> input sampling grid
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# --augment-strokes: what real pens and cameras do to a digit that MNIST's scans rarely show.
LIFTED_FRACTION = 0.25  # a stroke lifted: a band 1-2.5 px wide erased across the digit
THICKER_FRACTION = 0.2  # a broader pen: grey dilation by 1 px
BLURRED_FRACTION = 0.2  # an out-of-focus photo: a Gaussian blur, sigma 0.5-1.2 px


def augment_strokes(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Lifted strokes, broader pens and blur, each on a random part of the batch: a band erased
    across the digit (within ±35° of horizontal, through a point near its centre), a 3x3 grey
    dilation, or a Gaussian blur. x: (N,1,28,28), raw 0..255; the result has the same shape."""
    n, _, height, width = x.shape

    def chosen(fraction: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) < fraction).view(n, 1, 1, 1)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * (hi - lo) + lo).view(n, 1, 1)

    thicker = F.max_pool2d(x, 3, stride=1, padding=1)
    x = torch.where(chosen(THICKER_FRACTION), thicker, x)
    sigma = uniform(0.5, 1.2).view(n, 1, 1, 1)
    taps = torch.arange(-2, 3, dtype=x.dtype).view(1, 1, 1, 5)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum(-1, keepdim=True)  # (N,1,1,5): one 1-D Gaussian per image
    padded = F.pad(x, (2, 2, 2, 2))
    rows = functools.reduce(operator.add, [padded[..., :, k : k + width] * kernel[..., k : k + 1] for k in range(5)])
    blurred = functools.reduce(
        operator.add, [rows[..., k : k + height, :] * kernel[..., k : k + 1].transpose(-1, -2) for k in range(5)]
    )
    x = torch.where(chosen(BLURRED_FRACTION), blurred, x)
    ys = torch.arange(height, dtype=x.dtype).view(1, height, 1)
    xs = torch.arange(width, dtype=x.dtype).view(1, 1, width)
    angle = uniform(-35, 35) * math.pi / 180
    cy, cx = uniform(height * 0.3, height * 0.7), uniform(width * 0.4, width * 0.6)
    distance = ((ys - cy) * torch.cos(angle) - (xs - cx) * torch.sin(angle)).abs()
    keep = ((distance - uniform(0.5, 1.25)) / 0.5).clamp(0, 1).unsqueeze(1)  # 0 inside the band
    return torch.where(chosen(LIFTED_FRACTION), x * keep, x)


def batches(n: int, batch_size: int, generator: torch.Generator | None) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    yield from order.split(batch_size)


def make_optimizer(name: str, params: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "nesterov":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def make_schedule(
    name: str, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, lr: float, step_size: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Every schedule is stepped once per batch, so `step` counts its period in batches."""
    total = max(1, epochs * steps_per_epoch)
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size * steps_per_epoch, gamma=0.1)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total)
    raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")


@torch.no_grad()
def predict_logits(net: nn.Module, x: torch.Tensor, batch_size: int = 1000, limit: int | None = None) -> torch.Tensor:
    net.eval()
    x = x[:limit] if limit else x
    return torch.cat([net(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]) if len(x) else x


def evaluate(net: nn.Module, split: Split, limit: int | None = None) -> tuple[float, float, torch.Tensor]:
    """(mean loss, accuracy, predicted classes) on a split."""
    logits = predict_logits(net, split.images, limit=limit)
    labels = split.labels[: len(logits)]
    loss = F.cross_entropy(logits, labels).item()
    pred = logits.argmax(1)
    return loss, (pred == labels).float().mean().item(), pred


def _write_metrics(run_dir: Path, history: list[dict[str, float]]) -> None:
    (run_dir / "metrics.json").write_text(json.dumps(history, indent=2) + "\n")
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def _setup_logging(run_dir: Path, quiet: bool) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(message)s")
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO if not quiet else logging.WARNING)
    for chatty in ("torch", "onnxscript", "onnx_ir", "matplotlib"):  # the ONNX exporter's passes log at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING if chatty != "torch" else logging.ERROR)


def training_command(argv: list[str]) -> str:
    """The command line as recorded in artifacts, without the local data location
    (the data's checksum is recorded instead): `--data-dir DIR` -> `--data-dir DATA_DIR`,
    CSV paths -> their file names."""
    out: list[str] = []
    redact: str | None = None
    for arg in argv:
        if redact is not None:
            out.append("DATA_DIR" if redact == "--data-dir" else Path(arg).name)
            redact = None
            continue
        flag, eq, value = arg.partition("=")
        if flag in ("--data-dir", "--csv", "--test-csv"):
            if eq:
                out.append(f"{flag}={'DATA_DIR' if flag == '--data-dir' else Path(value).name}")
            else:
                out.append(arg)
                redact = flag
            continue
        out.append(arg)
    return "digits train " + shlex.join(out)


def model_kwargs(args: argparse.Namespace, data: Data) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "activation": args.activation,
        "dropout": args.dropout,
        "mean": data.mean,
        "std": data.std,
        "num_classes": len(data.class_names),
    }
    if args.model == "mlp":
        kwargs.update(hidden=tuple(args.hidden), batch_norm=args.batch_norm)
    else:
        kwargs.update(pooling=args.pooling)
    return kwargs


def train_one_epoch(
    net: nn.Module,
    split: Split,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    args: argparse.Namespace,
    desc: str = "",
) -> tuple[float, float]:
    """One pass over ``split`` in a shuffled order; the schedule steps per batch. Returns (mean loss, accuracy)."""
    net.train()
    seen = correct = 0
    loss_sum = 0.0
    order = list(batches(len(split), args.batch_size, generator))
    bar = tqdm(order, desc=desc, unit="batch", leave=False, disable=args.quiet)
    for idx in bar:
        x, y = split.images[idx], split.labels[idx]  # (B, 1, 28, 28), (B,)
        if args.augment:
            x = augment(x, generator)
        if args.augment_strokes:
            x = augment_strokes(x, generator)
        logits = net(x)  # (B, C)
        loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        seen += len(y)
        correct += (logits.argmax(1) == y).sum().item()
        loss_sum += loss.item() * len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
    return loss_sum / seen, correct / seen


def _dry_run_data(data: Data, batch_size: int) -> Data:
    """A few batches end to end, for CI."""
    limit = batch_size * DRY_RUN_BATCHES
    data.train = Split(data.train.images[:limit], data.train.labels[:limit])
    data.test = Split(data.test.images[:1000], data.test.labels[:1000])
    if data.val is not None:
        data.val = Split(data.val.images[:limit], data.val.labels[:limit])
    return data


def run_info(args: argparse.Namespace, data: Data, command: str) -> dict[str, Any]:
    """What the checkpoint and the ONNX metadata record about this run."""
    return {
        "arch": args.model,
        "name": args.name or args.model,
        "dataset": args.dataset if args.dataset != "kaggle" else f"kaggle:{Path(args.csv).name}",
        "train_data_sha256": data.digest,
        "class_names": list(data.class_names),
        "training_command": command,
    }


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run one training; returns the results written to results.json."""
    run_dir: Path = args.out
    run_dir.mkdir(parents=True, exist_ok=True)
    _setup_logging(run_dir, args.quiet)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = training_command(sys.argv[2:] if sys.argv[1:2] == ["train"] else sys.argv[1:])

    data = load_data(args)
    if args.dry_run:
        data = _dry_run_data(data, args.batch_size)
    net = nets.build_model(args.model, **model_kwargs(args, data))
    log.info(
        "%s: %s parameters; %d train / %d validation / %d test images (%s)",
        args.model,
        f"{nets.count_parameters(net):,}",
        len(data.train),
        len(data.val) if data.val else 0,
        len(data.test),
        data.test_source,
    )
    epochs = 1 if args.dry_run else args.epochs
    steps_per_epoch = math.ceil(len(data.train) / args.batch_size)
    optimizer = make_optimizer(args.optimizer, net.parameters(), args.lr, args.weight_decay)
    schedule = make_schedule(args.schedule, optimizer, epochs, steps_per_epoch, args.lr, args.step_size)
    generator = torch.Generator().manual_seed(args.seed)

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    config.update(command=command, torch=torch.__version__, train_data_sha256=data.digest)
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"val_acc": -1.0, "epoch": 0}
    start_epoch = 1
    if args.resume:
        state = RunState.load(args.resume)
        state.restore(net, optimizer, schedule, generator)
        history, best, start_epoch = state.history, state.best, state.epoch + 1
        log.info("resumed from %s at epoch %d", args.resume, start_epoch)

    info = run_info(args, data, command)
    stale = 0 if not history else history[-1]["epoch"] - best["epoch"]
    started = time.perf_counter() - (history[-1]["elapsed_s"] if history else 0.0)
    for epoch in range(start_epoch, epochs + 1):
        if stale >= args.patience > 0:
            log.info("early stop: no validation improvement for %d epochs", stale)
            break
        train_loss, train_acc = train_one_epoch(
            net, data.train, optimizer, schedule, generator, args, desc=f"epoch {epoch}/{epochs}"
        )
        row: dict[str, float] = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": train_loss,
            "train_acc": train_acc,
        }
        if data.val is not None:
            row["val_loss"], row["val_acc"], _ = evaluate(net, data.val)
        row["elapsed_s"] = round(time.perf_counter() - started, 3)
        if args.stop_at_test_accuracy is not None:  # time-to-accuracy runs: this evaluation is not timed
            peek = time.perf_counter()
            row["test_acc"] = evaluate(net, data.test)[1]
            started += time.perf_counter() - peek
        history.append(row)
        score = row.get("val_acc", row["train_acc"])
        improved = score > best["val_acc"]
        if improved:
            best = {"val_acc": score, "epoch": epoch}
            Checkpoint.of(net, args.model, {**info, "epoch": epoch}).save(run_dir / "best.pt")
        stale = epoch - best["epoch"]
        log.info(
            "epoch %d: train loss %.4f acc %.4f | val loss %s acc %s | %.1fs%s",
            epoch, row["train_loss"], row["train_acc"],
            f"{row['val_loss']:.4f}" if "val_loss" in row else "-",
            f"{row['val_acc']:.4f}" if "val_acc" in row else "-",
            row["elapsed_s"], " *best*" if improved else "",
        )
        _write_metrics(run_dir, history)
        RunState.capture(net, optimizer, schedule, generator, history, best, epoch).save(run_dir / "last.pt")
        if args.stop_at_test_accuracy is not None and row["test_acc"] >= args.stop_at_test_accuracy:
            log.info("test accuracy %.4f reached the target %.4f after %.1f s", row["test_acc"],
                     args.stop_at_test_accuracy, row["elapsed_s"])
            break

    return finish(args, run_dir, data, info, history, best)


def finish(
    args: argparse.Namespace, run_dir: Path, data: Data, info: dict[str, Any], history: list[dict[str, float]],
    best: dict[str, Any],
) -> dict[str, Any]:
    """Evaluate the best checkpoint on the test split, plot, export, and write results.json."""
    from core import plots
    from training import export

    checkpoint = Checkpoint.load(run_dir / "best.pt")
    net = checkpoint.build()
    test_loss, test_acc, pred = evaluate(net, data.test)
    cm = confusion_matrix(data.test.labels.numpy(), pred.numpy(), len(data.class_names))
    report = class_report(cm)
    log.info("test accuracy of best checkpoint (epoch %d): %.4f%%", best["epoch"], 100 * test_acc)
    print(format_report(cm, data.class_names))
    plots.plot_training_curves(history, run_dir / "curves.png", title=f"{info['name']} on {info['dataset']}")
    plots.plot_confusion_matrix(cm, data.class_names, run_dir / "confusion.png", title=f"{info['name']} test")

    metrics = {
        "test_accuracy": round(test_acc, 6),
        "test_loss": round(test_loss, 6),
        "test_images": len(data.test),
        "test_source": data.test_source,
        "val_accuracy": round(best["val_acc"], 6),
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "train_seconds": history[-1]["elapsed_s"] if history else 0.0,
    }
    checkpoint.info["metrics"] = metrics
    checkpoint.save(run_dir / "best.pt")
    onnx_path, parity = export.export_checkpoint(
        run_dir / "best.pt",
        run_dir / f"{info['name']}.onnx",
        name=info["name"],
        version=args.version,
        manifest=args.manifest,
        parity_images=data.test.images[:1000].numpy().reshape(-1, 28, 28),
    )
    results = {
        **metrics,
        "per_class_recall": [round(float(r), 6) for r in report.recall],
        "onnx": str(onnx_path.name),
        "onnx_sha256": export.sha256_of(onnx_path),
        "parity": {"images": parity.images, "argmax_agreement": parity.argmax_agreement,
                   "max_prob_diff": parity.max_prob_diff} if parity else None,
    }
    if args.test_csv is not None:
        results["submission"] = str(write_submission(net, args.test_csv, run_dir / "submission.csv"))
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"test accuracy {test_acc:.4%} on {len(data.test):,} images; wrote {onnx_path}")
    return results


def write_submission(net: nn.Module, test_csv: Path, out: Path) -> Path:
    """Predict a Kaggle test.csv and write the ImageId,Label submission."""
    table = read_kaggle_csv(test_csv, strict=True)
    x = torch.from_numpy(table.images.astype(np.float32)).reshape(-1, 1, 28, 28)
    predictions = predict_logits(net, x).argmax(1).tolist()
    write_kaggle_submission(out, predictions)
    log.info("wrote Kaggle submission %s (%d rows)", out, len(predictions))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=("mnist", "fashion-mnist", "kaggle"), default="mnist",
                      help="training data: MNIST or Fashion-MNIST IDX files, or a Kaggle digit-recognizer "
                      "train.csv (default: %(default)s)")
    data.add_argument("--data-dir", type=Path, default=None,
                      help="directory holding the IDX files; it is only read: files missing there are taken from "
                      "the cache ($DIGITS_DATA_DIR, else ~/.cache/digits), downloaded into it from the mirrors "
                      "and checksum-verified (default: the cache)")
    data.add_argument("--mirror", action="append", default=[], metavar="URL",
                      help="base URL of a mirror holding the IDX files, used instead of the public ones; repeat for "
                      "several (default: $DIGITS_MNIST_MIRRORS, else the public mirrors)")
    data.add_argument("--no-verify", action="store_true",
                      help="accept IDX files whose checksum differs from the official one (custom or sample "
                      "data) instead of re-downloading them")
    data.add_argument("--csv", type=Path, default=None, help="Kaggle train.csv (label,pixel0..pixel783); "
                      "needed with --dataset kaggle")
    data.add_argument("--test-csv", type=Path, default=None,
                      help="Kaggle test.csv (pixel0..pixel783): also write submission.csv (ImageId,Label) "
                      "into the run directory")
    data.add_argument("--val-fraction", type=float, default=1 / 12,
                      help="stratified validation split taken from the training data, for early stopping "
                      "and the best checkpoint; 0 trains on everything (default: 1/12, 5,000 of MNIST's 60,000)")
    data.add_argument("--test-fraction", type=float, default=0.1,
                      help="Kaggle only: stratified hold-out of train.csv used as the test split "
                      "(default: %(default)s)")
    data.add_argument("--augment", action="store_true",
                      help="small random affine distortions of each batch: rotation ±10°, scale 0.9-1.1, "
                      "shear, shift ±2 px (default: off)")
    data.add_argument("--augment-strokes", action="store_true",
                      help="pen and camera distortions of each batch: a quarter of the digits with a stroke "
                      "lifted (a band 1-2.5 px wide erased across), a fifth drawn with a broader pen, a fifth "
                      "blurred (sigma 0.5-1.2 px); for reading photos and numbers written in pieces "
                      "(default: off)")

    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=sorted(nets.ARCHITECTURES), default="lenet5",
                       help="architecture (default: %(default)s)")
    model.add_argument("--name", default=None, help="model name in metadata and file names (default: --model)")
    model.add_argument("--activation", choices=sorted(nets.ACTIVATIONS), default="relu",
                       help="activation function (default: %(default)s)")
    model.add_argument("--pooling", choices=sorted(nets.POOLINGS), default="max",
                       help="LeNet-5 pooling: avg as in the 1998 paper, or max (default: %(default)s)")
    model.add_argument("--hidden", type=int, nargs="+", default=[256, 256, 256],
                       help="MLP hidden layer widths (default: 256 256 256)")
    model.add_argument("--dropout", type=float, default=0.0,
                       help="dropout after each hidden layer (MLP) or after the 120-unit layer (LeNet-5) "
                       "(default: %(default)s)")
    model.add_argument("--batch-norm", action="store_true", help="MLP: batch norm after each hidden layer")

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=15, help="maximum number of epochs (default: %(default)s)")
    opt.add_argument("--batch-size", type=int, default=128, help="images per step (default: %(default)s)")
    opt.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                     help="sgd; momentum (SGD, 0.9); nesterov (SGD, 0.9, Nesterov); adagrad; rmsprop; adam; "
                     "adamw (default: %(default)s)")
    opt.add_argument("--lr", type=float, default=1e-3, help="(peak) learning rate (default: %(default)s)")
    opt.add_argument("--schedule", choices=SCHEDULES, default="onecycle",
                     help="learning-rate schedule, stepped per batch: constant; step (×0.1 every --step-size "
                     "epochs); cosine annealing to 0; onecycle (warm-up then anneal) (default: %(default)s)")
    opt.add_argument("--step-size", type=int, default=5, help="epochs between decays of --schedule step "
                     "(default: %(default)s)")
    opt.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay (default: %(default)s)")
    opt.add_argument("--label-smoothing", type=float, default=0.0,
                     help="label smoothing of the cross-entropy loss (default: %(default)s)")
    opt.add_argument("--patience", type=int, default=5,
                     help="early stopping: stop after this many epochs without a better validation accuracy; "
                     "0 disables (default: %(default)s)")

    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, default=Path("runs/latest"),
                     help="run directory for config, metrics, plots, checkpoints and the ONNX file "
                     "(default: %(default)s)")
    run.add_argument("--resume", type=Path, default=None,
                     help="continue from a last.pt written by an earlier run with the same options")
    run.add_argument("--seed", type=int, default=0,
                     help="seed for the split, shuffling, augmentation and initialisation; a run is "
                     "deterministic on CPU for a given seed and thread count (default: %(default)s)")
    run.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 leaves torch's default")
    run.add_argument("--version", default="1", help="model version recorded in the ONNX metadata "
                     "(default: %(default)s)")
    run.add_argument("--manifest", type=Path, default=None,
                     help="also add the exported model to this manifest.json, e.g. models/manifest.json "
                     "(default: none)")
    run.add_argument("--stop-at-test-accuracy", type=float, default=None, metavar="ACC",
                     help="evaluate the test split after every epoch and stop once its accuracy reaches ACC "
                     "(for time-to-accuracy benchmarks only: it looks at the test set; default: off)")
    run.add_argument("--dry-run", action="store_true",
                     help=f"one epoch of {DRY_RUN_BATCHES} batches, then test and export as usual (for CI)")
    run.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


def main(args: argparse.Namespace) -> int:
    if args.resume and not args.resume.exists():
        raise SystemExit(f"--resume {args.resume}: no such checkpoint; use the last.pt of an earlier run")
    try:
        train(args)
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    return 0
