"""SCAFFOLD-M (Cheng et al., ICLR 2024): FedAvg-M's global momentum on SCAFFOLD's corrected gradient."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedsim import tree
from fedsim.strategy import Aggregate, Batch, GradFn, LocalContext, LocalSummary, RoundInfo, State
from fedsim.tree import Params
from strategies.fedavg_m import FedAvgMomentum


@dataclass
class ScaffoldMomentum(FedAvgMomentum):
    """SCAFFOLD-M: local direction beta * (grad - c_i + c) + (1 - beta) * g.

    c_i+ = the mean of the raw stochastic gradients along the client's trajectory (not the
    momentum-mixed direction that SCAFFOLD's option II would give); c += (1/N) sum_S (c_i+ - c_i);
    absent clients keep c_i, and c and every c_i start at 0. g and x are updated as in FedAvg-M,
    with the same `beta`, `server_lr`, `server_lr_scale` and `momentum_init` options and defaults.
    beta = 1 is SCAFFOLD (option II gives the same c_i+ then).
    """

    name: ClassVar[str] = "scaffold_m"

    def init_server_state(self, params: Params) -> State:
        return {**super().init_server_state(params), "c": tree.zeros_like(params)}

    def broadcast(self, server_state: State) -> State:
        return {**super().broadcast(server_state), "c": server_state["c"]}

    def server_update(
        self, params: Params, server_state: State, aggregate: Aggregate, info: RoundInfo
    ) -> tuple[Params, State]:
        params, state = super().server_update(params, server_state, aggregate, info)
        c = tree.add(server_state["c"], aggregate.means["dc"], info.cohort_size / info.num_clients)
        return params, {**state, "c": c}

    def init_client_state(self, params: Params) -> State:
        return {"c": tree.zeros_like(params)}

    def client_begin(self, ctx: LocalContext) -> State:
        return {
            "correction": tree.sub(ctx.broadcast["c"], ctx.client_state["c"]),
            "grad_sum": tree.zeros_like(ctx.global_params),
        }

    def local_step(
        self, params: Params, batch: Batch, grad_fn: GradFn, carry: State, ctx: LocalContext
    ) -> tuple[torch.Tensor, Params, State]:
        loss, grads = grad_fn(params, batch)
        direction = self.mix(tree.add(grads, carry["correction"]), ctx)
        return loss, direction, {**carry, "grad_sum": tree.add(carry["grad_sum"], grads)}

    def client_end(
        self, params: Params, carry: State, ctx: LocalContext, summary: LocalSummary
    ) -> tuple[State, State]:
        upload, _ = super().client_end(params, carry, ctx, summary)
        c_new = tree.scale(carry["grad_sum"], 1.0 / summary.num_steps)
        return {**upload, "dc": tree.sub(c_new, ctx.client_state["c"])}, {"c": c_new}

    def upload_weights(self, num_samples: int) -> dict[str, float]:
        return {**super().upload_weights(num_samples), "dc": 1.0}
