"""Checkpoints: a trained network with what rebuilds it (best.pt), and a run's resumable state (last.pt).

As in nanoGPT, the architecture name and its arguments travel beside the weights, so loading
never repeats anything about the model in code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.files import atomic_write
from training import nets


def _save(state: dict[str, Any], path: Path) -> None:
    with atomic_write(path) as out:  # a crash mid-save leaves the previous checkpoint whole
        torch.save(state, out)


@dataclass
class Checkpoint:
    """A network as ``digits export`` needs it: architecture, its arguments, weights and the run's info."""

    arch: str
    model_args: dict[str, Any]
    weights: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)  # name, dataset, data checksum, command, metrics...

    @classmethod
    def of(cls, net: nn.Module, arch: str, info: dict[str, Any]) -> Checkpoint:
        """Snapshot ``net`` (its weights are copied, so later training steps do not change them)."""
        weights = {key: value.detach().clone() for key, value in net.state_dict().items()}
        return cls(arch, nets.model_args(net), weights, dict(info))

    def build(self) -> nn.Module:
        """The network, in eval mode."""
        net = nets.build_model(self.arch, **self.model_args)
        net.load_state_dict(self.weights)
        return net.eval()

    def save(self, path: str | Path) -> None:
        state = {"arch": self.arch, "model_args": self.model_args, "model": self.weights, "info": self.info}
        _save(state, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        """Read a best.pt (or a run directory holding one) written by ``digits train``."""
        path = Path(path)
        if path.is_dir():
            path = path / "best.pt"
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {path} not found; pass a run directory or its best.pt")
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            return cls(state["arch"], dict(state["model_args"]), state["model"], dict(state.get("info", {})))
        except KeyError as exc:
            raise ValueError(
                f"{path} is not a digits checkpoint (missing {exc}); it must come from `digits train`"
            ) from None


@dataclass
class RunState:
    """Everything ``--resume`` needs to continue a run exactly: weights, optimiser, schedule, random state, history."""

    model: dict[str, Any]
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    generator: torch.Tensor
    torch_rng: torch.Tensor
    history: list[dict[str, float]]
    best: dict[str, Any]  # {"val_acc": best score so far, "epoch": its epoch}
    epoch: int  # the last finished epoch

    @classmethod
    def capture(
        cls,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler,
        generator: torch.Generator,
        history: list[dict[str, float]],
        best: dict[str, Any],
        epoch: int,
    ) -> RunState:
        """The state at the end of ``epoch``."""
        return cls(
            net.state_dict(), optimizer.state_dict(), schedule.state_dict(), generator.get_state(),
            torch.get_rng_state(), history, best, epoch,
        )

    def restore(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler,
        generator: torch.Generator,
    ) -> None:
        """Put the saved weights, optimiser, schedule and random states back into these objects."""
        net.load_state_dict(self.model)
        optimizer.load_state_dict(self.optimizer)
        schedule.load_state_dict(self.schedule)
        generator.set_state(self.generator)
        torch.set_rng_state(self.torch_rng)

    def save(self, path: str | Path) -> None:
        _save(dict(vars(self)), Path(path))

    @classmethod
    def load(cls, path: str | Path) -> RunState:
        # weights_only=False: the optimiser and schedule states hold plain Python objects; only
        # load last.pt files your own runs wrote.
        state = torch.load(path, map_location="cpu", weights_only=False)
        try:
            return cls(**{name: state[name] for name in cls.__dataclass_fields__})
        except KeyError as exc:
            raise ValueError(f"{path} is not a last.pt written by `digits train` (missing {exc})") from None
