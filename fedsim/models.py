"""Models: the networks clients train, and the model interface a plugin implements.

A model is a dataclass subclass of `Model` whose fields are its hyperparameters (the `[model]`
table of a config, next to `name`), with `build(input_shape, num_classes) -> nn.Module`.
Register it in the `fedsim.models` entry-point group, or name it as `model.name =
"package.module:Class"` / `"path/to/file.py:Class"`; the built-ins below register the same way.
`build_model` seeds torch's generator around `build`, so the same seed gives the same weights.

Built-in models normalise with GroupNorm, so a model's state is exactly its parameters; the
CNN's `norm = "batch"` adds BatchNorm, whose running statistics a trainer keeps per client
(FedBN, `fedsim.normalisation`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from fedsim.config import option
from fedsim.errors import ConfigError
from fedsim.plugins import build_named


@dataclass
class Model:
    """The model interface: fields are hyperparameters; `build` makes the network."""

    name: ClassVar[str] = "model"

    def validate(self) -> None:
        """Raise `ConfigError` for combinations of fields that make no sense (ranges: `option`)."""

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        raise NotImplementedError


@dataclass
class MLP(Model):
    """Multi-layer perceptron on flattened inputs (model.hidden sets the widths)."""

    name: ClassVar[str] = "mlp"

    hidden: list[int] = option([128], gt=0)

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        return nn.Sequential(*layers)


@dataclass
class CNN(Model):
    """Small CNN, 1-D for sequences (C, L) and 2-D for images (C, H, W) (model.channels).

    Conv-(BatchNorm)-ReLU-(pool) stacks, then global average pooling and a linear head;
    `norm = "batch"` puts a BatchNorm after each convolution (the network of FedBN).
    """

    name: ClassVar[str] = "cnn"

    channels: list[int] = option([32, 64], gt=0)
    norm: str = option("none", choices=("none", "batch"))

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        if len(input_shape) not in (2, 3):
            raise ConfigError(
                f"model 'cnn' needs inputs shaped (C, L) or (C, H, W), got {input_shape}; use model.name=mlp"
            )
        conv, norm, pool, gap = (
            (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d)
            if len(input_shape) == 2
            else (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d)
        )
        layers: list[nn.Module] = []
        width, size = input_shape[0], min(input_shape[1:])
        for out in self.channels:
            layers += [conv(width, out, kernel_size=3, padding=1), *([norm(out)] if self.norm == "batch" else []), nn.ReLU()]
            if size >= 4:
                layers.append(pool(2))
                size //= 2
            width = out
        layers += [gap(1), nn.Flatten(), nn.Linear(width, num_classes)]
        return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and a residual connection (1x1 conv when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(2, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(2, cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(2, cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def resnet_gn(
    input_shape: tuple[int, ...], num_classes: int, stages: list[tuple[int, int, int]], name: str
) -> nn.Module:
    """A GroupNorm ResNet: a 3x3 stem as wide as the first stage, then `stages` of
    (width, basic blocks, stride of the first block), global pooling and a linear head."""
    if len(input_shape) != 3:
        raise ConfigError(f"model '{name}' needs image inputs (C, H, W), got {input_shape}")
    cin = stages[0][0]
    layers: list[nn.Module] = [
        nn.Conv2d(input_shape[0], cin, 3, 1, 1, bias=False),
        nn.GroupNorm(2, cin),
        nn.ReLU(),
    ]
    for cout, blocks, stride in stages:
        for i in range(blocks):
            layers.append(BasicBlock(cin, cout, stride if i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


@dataclass
class ResNet18GN(Model):
    """CIFAR ResNet-18 with GroupNorm(2), as in FL-Simulator (images only).

    Four stages of two basic blocks, widths 64/128/256/512, for 32x32-style images.
    """

    name: ClassVar[str] = "resnet18_gn"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        stages = [(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)]
        return resnet_gn(input_shape, num_classes, stages, self.name)


@dataclass
class ResNet32GN(Model):
    """CIFAR ResNet-32 (He et al.): 3 stages of 5 basic blocks, widths 16/32/64, GroupNorm.

    The CIFAR ResNet-(6n+2) of He et al. (2016): three stages of n basic blocks with widths 16,
    32, 64 (stride 2 into stages 2 and 3); GroupNorm and 1x1-conv shortcuts.
    """

    name: ClassVar[str] = "resnet32_gn"
    blocks_per_stage: ClassVar[int] = 5

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        n = self.blocks_per_stage
        return resnet_gn(input_shape, num_classes, [(16, n, 1), (32, n, 2), (64, n, 2)], self.name)


@dataclass
class ResNet110GN(ResNet32GN):
    """CIFAR ResNet-110 (He et al.): 3 stages of 18 basic blocks, widths 16/32/64, GroupNorm."""

    name: ClassVar[str] = "resnet110_gn"
    blocks_per_stage: ClassVar[int] = 18


def build_model(table: dict[str, Any], input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Build the model a `[model]` table names for the given input shape, initialised from `seed`."""
    model = build_named("model", table)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model.build(tuple(input_shape), num_classes)
