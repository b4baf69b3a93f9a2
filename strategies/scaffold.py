"""SCAFFOLD (Karimireddy et al. 2020), option II: control variates correct the clients' drift."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedsim import tree
from fedsim.config import option
from fedsim.strategy import Aggregate, Batch, GradFn, LocalContext, LocalSummary, RoundInfo, State
from fedsim.tree import Params
from strategies.fedavg import WEIGHTINGS, FedAvg


@dataclass
class Scaffold(FedAvg):
    """SCAFFOLD option II: local direction grad - c_i + c; server corrects x and c.

    Client i, after K_i real local steps at the round's lr: c_i+ = c_i - c + (x - y_i) / (K_i lr).
    Server: x -= server_lr * mean_i (x - y_i), c += (|S| / N) * uniform mean_i (c_i+ - c_i).
    c and every c_i start at 0; only participants' c_i change (absent clients keep theirs).
    Default `weighting="uniform"` for the x update, as in the paper and FL-Simulator
    ("samples" weights it by client size like FedAvg); default `server_lr=1.0`.
    """

    name: ClassVar[str] = "scaffold"

    weighting: str = option("uniform", choices=WEIGHTINGS)
    server_lr: float = option(1.0, gt=0)

    def init_server_state(self, params: Params) -> State:
        return {"c": tree.zeros_like(params)}

    def broadcast(self, server_state: State) -> State:
        return {"c": server_state["c"]}

    def server_update(
        self, params: Params, server_state: State, aggregate: Aggregate, info: RoundInfo
    ) -> tuple[Params, State]:
        means = aggregate.means
        params = tree.add(params, means["delta"], -self.server_lr)
        c = tree.add(server_state["c"], means["dc"], info.cohort_size / info.num_clients)
        return params, {"c": c}

    def init_client_state(self, params: Params) -> State:
        return {"c": tree.zeros_like(params)}

    def client_begin(self, ctx: LocalContext) -> State:
        return {"correction": tree.sub(ctx.broadcast["c"], ctx.client_state["c"])}

    def local_step(
        self, params: Params, batch: Batch, grad_fn: GradFn, carry: State, ctx: LocalContext
    ) -> tuple[torch.Tensor, Params, State]:
        loss, grads = grad_fn(params, batch)
        return loss, tree.add(grads, carry["correction"]), carry

    def client_end(
        self, params: Params, carry: State, ctx: LocalContext, summary: LocalSummary
    ) -> tuple[State, State]:
        delta = tree.sub(ctx.global_params, params)
        c_old = ctx.client_state["c"]
        mean_direction = tree.scale(delta, 1.0 / (summary.num_steps * summary.lr))
        c_new = tree.sub(mean_direction, carry["correction"])  # c_i - c + (x - y_i) / (K_i lr)
        return {"delta": delta, "dc": tree.sub(c_new, c_old)}, {"c": c_new}

    def upload_weights(self, num_samples: int) -> dict[str, float]:
        return {**super().upload_weights(num_samples), "dc": 1.0}
