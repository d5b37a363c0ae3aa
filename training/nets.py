"""The two architectures, each configured by a dataclass.

Every network takes raw pixels: float32 ``[N, 1, 28, 28]`` on the 0..255 scale,
white ink on black. The first layer (:class:`Normalize`) maps them to the
standardised scale the weights were trained on, so the exported ONNX graph
carries its own normalisation and no client ever normalises.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Literal

import torch
from torch import nn

from core.contract import MNIST_MEAN, MNIST_STD

Activation = Literal["relu", "sigmoid", "tanh", "leaky_relu"]
Pooling = Literal["avg", "max"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}
POOLINGS: dict[str, type[nn.Module]] = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}


def _activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


class Normalize(nn.Module):
    """Raw 0..255 pixels -> (x/255 - mean) / std, folded into one multiply-add."""

    scale: torch.Tensor  # 1 / (255 std), a buffer
    shift: torch.Tensor  # -mean / std, a buffer

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        if std <= 0:
            raise ValueError(f"std must be positive, got {std}")
        # Buffers, not constants: they travel in the state dict and the ONNX graph.
        self.register_buffer("scale", torch.tensor(1.0 / (255.0 * std), dtype=torch.float32))
        self.register_buffer("shift", torch.tensor(-mean / std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


@dataclass
class MLPConfig:
    """784 -> hidden... -> 10. The default is the reference Keras MNIST MLP."""

    hidden: tuple[int, ...] = (256, 256, 256)
    activation: Activation = "relu"
    dropout: float = 0.2
    batch_norm: bool = False
    mean: float = MNIST_MEAN
    std: float = MNIST_STD
    num_classes: int = 10

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden widths must be positive integers, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        _activation(self.activation)


@dataclass
class LeNet5Config:
    """LeCun et al. 1998, with padding 2 on 28x28 standing in for the paper's 32x32 input."""

    activation: Activation = "relu"
    pooling: Pooling = "max"
    dropout: float = 0.0
    mean: float = MNIST_MEAN
    std: float = MNIST_STD
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose one of {sorted(POOLINGS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        _activation(self.activation)


class MLP(nn.Module):
    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = [Normalize(config.mean, config.std), nn.Flatten()]
        width = 28 * 28
        for h in config.hidden:
            layers.append(nn.Linear(width, h))
            if config.batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(_activation(config.activation))
            if config.dropout:
                layers.append(nn.Dropout(config.dropout))
            width = h
        layers.append(nn.Linear(width, config.num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # (N,1,28,28) -> (N,10) logits


class LeNet5(nn.Module):
    def __init__(self, config: LeNet5Config) -> None:
        super().__init__()
        self.config = config
        pool = POOLINGS[config.pooling]
        self.features = nn.Sequential(
            Normalize(config.mean, config.std),
            nn.Conv2d(1, 6, kernel_size=5, padding=2),  # (N,6,28,28)
            _activation(config.activation),
            pool(2),  # (N,6,14,14)
            nn.Conv2d(6, 16, kernel_size=5),  # (N,16,10,10)
            _activation(config.activation),
            pool(2),  # (N,16,5,5)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (N,400)
            nn.Linear(16 * 5 * 5, 120),
            _activation(config.activation),
            nn.Dropout(config.dropout) if config.dropout else nn.Identity(),
            nn.Linear(120, 84),
            _activation(config.activation),
            nn.Linear(84, config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass
class _Arch:
    config: type
    module: type[nn.Module]
    description: str = field(default="")


ARCHITECTURES: dict[str, _Arch] = {
    "mlp": _Arch(MLPConfig, MLP, "multilayer perceptron, 784-256-256-256-10 by default"),
    "lenet5": _Arch(LeNet5Config, LeNet5, "LeNet-5: two 5x5 conv+pool stages, then 120-84-10"),
}


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """Build an architecture by name from its config fields (as stored in checkpoints and metadata)."""
    try:
        spec = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}") from None
    return spec.module(spec.config(**kwargs))


def model_args(model: nn.Module) -> dict[str, Any]:
    """The config fields of a built model, JSON-ready: enough to rebuild it with build_model."""
    config = model.config
    if not is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"{type(model).__name__} has no dataclass config; build it with build_model")
    args = asdict(config)
    if "hidden" in args:
        args["hidden"] = list(args["hidden"])
    return args


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
