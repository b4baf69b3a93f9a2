"""FedAvgM (Hsu et al. 2019): FedAvg with heavy-ball momentum on the server, Flower's update rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedsim.config import option
from fedsim.server_opt import SGD, ServerOptimised
from strategies.fedavg import FedAvg


@dataclass
class FedAvgM(ServerOptimised, FedAvg):
    """FedAvgM: server momentum v = momentum * v + mean delta, then w -= server_lr * v.

    The pseudo-gradient is the weighted mean client delta (`weighting` as in FedAvg), stepped by
    the SGD server optimiser of fedsim.server_opt. The rule is `flwr.server.strategy.FedAvgM`:
    round 1 sets v to the pseudo-gradient (v starts at 0, which is the same), no dampening, no
    Nesterov. Defaults: `momentum=0.9` (Hsu et al.'s typical value; Flower's default of 0.0 would
    make this plain FedAvg) and `server_lr=1.0`. The effective server step is about
    server_lr / (1 - momentum), so lower `server_lr` when raising `momentum`. `momentum=0,
    server_lr=1` is FedAvg.
    """

    name: ClassVar[str] = "fedavgm"

    server_lr: float = option(1.0, gt=0)
    momentum: float = option(0.9, ge=0, lt=1)

    def optimiser(self) -> SGD:
        return SGD(self.server_lr, self.momentum)
