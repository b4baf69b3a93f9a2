"""FedDyn (Acar et al., ICLR 2021, Algorithm 1): a dynamic regulariser per client that makes the
clients' local optima agree with the global one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedsim import tree
from fedsim.config import option
from fedsim.strategy import Aggregate, Batch, GradFn, LocalContext, LocalSummary, RoundInfo, State, Strategy
from fedsim.tree import Params


@dataclass
class FedDyn(Strategy):
    """FedDyn: each client minimises L_i(t) - <g_i, t> + alpha/2 ||t - x||^2 from t = x.

    Client i keeps g_i (starts at 0): after training to y_i, g_i <- g_i - alpha (y_i - x). The
    server keeps h (starts at 0): h <- h - alpha (1/N) sum_{i in S} (y_i - x), then x <- the
    uniform mean of the y_i - h / alpha (N: all clients, S: the round's). `alpha` defaults to
    0.01, the middle of the paper's grid {0.1, 0.01, 0.001}. The reported loss is L_i alone.
    """

    name: ClassVar[str] = "feddyn"

    alpha: float = option(0.01, gt=0)

    def init_server_state(self, params: Params) -> State:
        return {"h": tree.zeros_like(params)}

    def init_client_state(self, params: Params) -> State:
        return {"g": tree.zeros_like(params)}

    def local_step(
        self, params: Params, batch: Batch, grad_fn: GradFn, carry: State, ctx: LocalContext
    ) -> tuple[torch.Tensor, Params, State]:
        loss, grads = grad_fn(params, batch)
        pull = tree.add(tree.sub(grads, ctx.client_state["g"]), tree.sub(params, ctx.global_params), self.alpha)
        return loss, pull, carry

    def client_end(
        self, params: Params, carry: State, ctx: LocalContext, summary: LocalSummary
    ) -> tuple[State, State]:
        delta = tree.sub(ctx.global_params, params)  # x - y_i
        return {"delta": delta}, {"g": tree.add(ctx.client_state["g"], delta, self.alpha)}

    def upload_weights(self, num_samples: int) -> dict[str, float]:
        return {"delta": 1.0}

    def server_update(
        self, params: Params, server_state: State, aggregate: Aggregate, info: RoundInfo
    ) -> tuple[Params, State]:
        mean_delta = aggregate.means["delta"]  # x - mean_i y_i
        h = tree.add(server_state["h"], mean_delta, self.alpha * info.cohort_size / info.num_clients)
        return tree.add(tree.sub(params, mean_delta), h, -1.0 / self.alpha), {"h": h}
