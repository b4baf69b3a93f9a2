"""FedProx (Li et al. 2020): local SGD on the loss plus a proximal term to the global model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedsim import tree
from fedsim.config import option
from fedsim.strategy import Batch, GradFn, LocalContext, State
from fedsim.tree import Params
from strategies.fedavg import FedAvg


@dataclass
class FedProx(FedAvg):
    """FedProx: local objective f_i(w) + mu/2 * ||w - w_global||^2; server as FedAvg.

    The local direction is grad f_i(w) + mu * (w - w_global). The squared term is the paper's
    (the FedLD repository's baseline uses the unsquared norm). Default `mu=0.01`, the middle of
    the paper's grid {0.001, 0.01, 0.1, 1}. The reported loss is f_i alone.
    """

    name: ClassVar[str] = "fedprox"

    mu: float = option(0.01, ge=0)

    def local_step(
        self, params: Params, batch: Batch, grad_fn: GradFn, carry: State, ctx: LocalContext
    ) -> tuple[torch.Tensor, Params, State]:
        loss, grads = grad_fn(params, batch)
        return loss, tree.add(grads, tree.sub(params, ctx.global_params), self.mu), carry
