"""Model registry: the networks clients train.

All models are free of running-statistics buffers (GroupNorm, not BatchNorm), so a model's
state is exactly its parameters and every backend, including `torch.func.vmap`, can train it.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from fedsim.errors import ConfigError

MODELS: dict[str, str] = {
    "mlp": "multi-layer perceptron on flattened inputs (model.hidden sets the widths)",
    "cnn": "small CNN, 1-D for sequences (C, L) and 2-D for images (C, H, W) (model.channels)",
    "resnet18_gn": "CIFAR ResNet-18 with GroupNorm(2), as in FL-Simulator (images only)",
    "resnet32_gn": "CIFAR ResNet-32 (He et al.): 3 stages of 5 basic blocks, widths 16/32/64, GroupNorm",
    "resnet110_gn": "CIFAR ResNet-110 (He et al.): 3 stages of 18 basic blocks, widths 16/32/64, GroupNorm",
}


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: list[int]) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(input_shape: tuple[int, ...], num_classes: int, channels: list[int]) -> nn.Module:
    """Conv-ReLU-(pool) stacks, then global average pooling and a linear head."""
    if len(input_shape) not in (2, 3):
        raise ConfigError(
            f"model 'cnn' needs inputs shaped (C, L) or (C, H, W), got {input_shape}; use model.name=mlp"
        )
    conv, pool, gap = (
        (nn.Conv1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d)
        if len(input_shape) == 2
        else (nn.Conv2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d)
    )
    layers: list[nn.Module] = []
    width, size = input_shape[0], min(input_shape[1:])
    for out in channels:
        layers += [conv(width, out, kernel_size=3, padding=1), nn.ReLU()]
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


def resnet18_gn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """ResNet-18 for 32x32-style images (as FL-Simulator uses): four stages of two blocks."""
    stages = [(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)]
    return resnet_gn(input_shape, num_classes, stages, "resnet18_gn")


def cifar_resnet(
    input_shape: tuple[int, ...], num_classes: int, blocks_per_stage: int, name: str
) -> nn.Module:
    """The CIFAR ResNet-(6n+2) of He et al. (2016): three stages of n basic blocks with widths
    16, 32, 64 (stride 2 into stages 2 and 3); GroupNorm and 1x1-conv shortcuts."""
    stages = [(16, blocks_per_stage, 1), (32, blocks_per_stage, 2), (64, blocks_per_stage, 2)]
    return resnet_gn(input_shape, num_classes, stages, name)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mlp": lambda shape, classes, cfg: mlp(shape, classes, cfg.hidden),
    "cnn": lambda shape, classes, cfg: cnn(shape, classes, cfg.channels),
    "resnet18_gn": lambda shape, classes, cfg: resnet18_gn(shape, classes),
    "resnet32_gn": lambda shape, classes, cfg: cifar_resnet(shape, classes, 5, "resnet32_gn"),
    "resnet110_gn": lambda shape, classes, cfg: cifar_resnet(shape, classes, 18, "resnet110_gn"),
}


def build_model(cfg, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Build `cfg.name` for the given input shape with a seeded initialisation."""
    if cfg.name not in _BUILDERS:
        raise ConfigError(f"unknown model '{cfg.name}'; choose one of: {', '.join(MODELS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _BUILDERS[cfg.name](tuple(input_shape), num_classes, cfg)
