"""Plain backpropagation with local SGD: the default client trainer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedsim.trainer import ClientTrainer


@dataclass
class Backprop(ClientTrainer):
    """Backprop: gradients of the whole network, torch.optim.SGD steps with the [train] settings.

    Each local step takes the strategy's direction (plain gradients for FedAvg), clips it to
    `train.clip_norm`, adds `train.weight_decay` * params, applies `train.momentum` (reset every
    round) and steps by the round's lr.
    """

    name: ClassVar[str] = "backprop"
