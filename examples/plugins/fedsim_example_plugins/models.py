"""A model plugin: an MLP whose hidden layers are residual blocks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fedsim.config import option
from fedsim.models import Model


class Residual(nn.Module):
    """x + relu(linear(x)): a hidden layer that keeps its input's width."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.linear(x))


@dataclass
class ResidualMLP(Model):
    """Residual MLP: flatten, project to `width`, `depth` residual blocks, linear head."""

    name: ClassVar[str] = "residual_mlp"

    width: int = option(64, ge=1)
    depth: int = option(2, ge=1)

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        blocks = [Residual(self.width) for _ in range(self.depth)]
        return nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(input_shape), self.width), nn.ReLU(), *blocks,
            nn.Linear(self.width, num_classes),
        )
