"""FedNova (Wang et al., NeurIPS 2020): average the clients' normalised steps, so clients that
take more local steps do not pull the global model towards their own optimum."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedsim import tree
from fedsim.strategy import Aggregate, LocalContext, LocalSummary, RoundInfo, State
from fedsim.tree import Params
from strategies.fedavg import FedAvg


def effective_steps(num_steps: int | torch.Tensor, momentum: float) -> torch.Tensor:
    """a_i = (tau_i - rho (1 - rho^tau_i) / (1 - rho)) / (1 - rho): the norm of the weights local
    SGD with momentum rho gives a client's tau_i gradients (tau_i when rho = 0)."""
    steps = torch.as_tensor(num_steps, dtype=torch.float64)
    if momentum == 0:
        return steps
    return (steps - momentum * (1 - momentum**steps) / (1 - momentum)) / (1 - momentum)


@dataclass
class FedNova(FedAvg):
    """FedNova: x <- x - tau_eff * sum_i p_i Delta_i / a_i, with tau_eff = sum_i p_i a_i.

    Delta_i = x - y_i is client i's update, a_i its effective number of steps
    (`effective_steps` of its real local steps and the local SGD momentum `train.momentum`), p_i
    its weight (`weighting`: "samples", the paper's p_i = n_i / n, or "uniform"). With equal
    steps on every client this is FedAvg; it differs where clients do unequal work
    (`train.min_local_work`, local epochs over clients of unequal size).
    """

    name: ClassVar[str] = "fednova"

    def client_end(
        self, params: Params, carry: State, ctx: LocalContext, summary: LocalSummary
    ) -> tuple[State, State]:
        a = effective_steps(summary.num_steps, summary.momentum)
        delta = tree.sub(ctx.global_params, params)
        normalised = {k: v / a.to(v) for k, v in delta.items()}
        return {"delta": normalised, "steps": {"a": a}}, ctx.client_state

    def upload_weights(self, num_samples: int) -> dict[str, float]:
        weight = super().upload_weights(num_samples)["delta"]
        return {"delta": weight, "steps": weight}

    def server_update(
        self, params: Params, server_state: State, aggregate: Aggregate, info: RoundInfo
    ) -> tuple[Params, State]:
        tau_eff = aggregate.means["steps"]["a"]
        return {k: v - tau_eff.to(v) * aggregate.means["delta"][k] for k, v in params.items()}, server_state
