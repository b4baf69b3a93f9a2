"""FedAvg-M (Cheng et al., ICLR 2024; the same algorithm as FedCM): global momentum in local steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedsim import tree
from fedsim.config import option
from fedsim.strategy import Aggregate, Batch, GradFn, LocalContext, LocalSummary, RoundInfo, State, Strategy
from fedsim.tree import Params


@dataclass
class FedAvgMomentum(Strategy):
    """FedAvg-M: local direction beta * grad + (1 - beta) * g, g the last round's mean direction.

    Client i runs K_i real steps at the round's lr and uploads g_i = (x - y_i) / (lr * K_i), the
    mean of its local directions. Server: g+ = uniform mean_i g_i, x -= gamma * g+; g is frozen
    during a round and replaced, not accumulated, by the next one. The momentum is the
    strategy's: keep the trainer's `train.momentum` at 0.

    - `beta` (0, 1]: weight on the fresh gradient (PyTorch's momentum is 1 - beta); beta = 1 is
      FedAvg. Default 0.1, FedCM's and FL-Simulator's value (the paper's is unverified).
    - `server_lr` with `server_lr_scale="local"` (default): gamma = server_lr * lr * mean_i K_i,
      FL-Simulator's FedCM rule, so x moves by server_lr * mean_i(K_i) * mean_i(delta_i / K_i):
      the uniform mean client delta when every client takes the same number of steps; with
      unequal K_i, clients that took fewer steps count more. `server_lr_scale="absolute"`:
      gamma = server_lr, the paper's global lr gamma.
    - `momentum_init="zero"` (default, FL-Simulator): g^0 = 0, so round 1 takes steps scaled by
      beta. `"first_round"`: round 1 runs plain local SGD (beta = 1), so g^1 is an estimate of
      the mean gradient at x^0 rather than a beta-shrunk one.
    """

    name: ClassVar[str] = "fedavg_m"

    beta: float = option(0.1, gt=0, le=1)
    server_lr: float = option(1.0, gt=0)
    server_lr_scale: str = option("local", choices=("local", "absolute"))
    momentum_init: str = option("zero", choices=("zero", "first_round"))

    # ---- server side -------------------------------------------------------------------
    def init_server_state(self, params: Params) -> State:
        first_beta = 1.0 if self.momentum_init == "first_round" else self.beta
        return {"g": tree.zeros_like(params), "mix": {"beta": self.beta_tensor(first_beta, params)}}

    @staticmethod
    def beta_tensor(beta: float, params: Params) -> torch.Tensor:
        """beta as a 0-d tensor in the params' dtype (a float32 one would round a float64 model's steps)."""
        return torch.tensor(beta, dtype=next(iter(params.values())).dtype)

    def broadcast(self, server_state: State) -> State:
        return {"g": server_state["g"], "mix": server_state["mix"]}

    def server_update(
        self, params: Params, server_state: State, aggregate: Aggregate, info: RoundInfo
    ) -> tuple[Params, State]:
        g = aggregate.means["g"]
        gamma = self.server_lr
        if self.server_lr_scale == "local":
            gamma *= info.lr * float(aggregate.means["num_steps"]["k"])
        state = {**server_state, "g": g, "mix": {"beta": self.beta_tensor(self.beta, params)}}
        return tree.add(params, g, -gamma), state

    # ---- client side -------------------------------------------------------------------
    def mix(self, grads: Params, ctx: LocalContext) -> Params:
        """beta * grads + (1 - beta) * g, with this round's beta from the broadcast."""
        return tree.lerp(ctx.broadcast["g"], grads, ctx.broadcast["mix"]["beta"])

    def local_step(
        self, params: Params, batch: Batch, grad_fn: GradFn, carry: State, ctx: LocalContext
    ) -> tuple[torch.Tensor, Params, State]:
        loss, grads = grad_fn(params, batch)
        return loss, self.mix(grads, ctx), carry

    def client_end(
        self, params: Params, carry: State, ctx: LocalContext, summary: LocalSummary
    ) -> tuple[State, State]:
        g = tree.scale(tree.sub(ctx.global_params, params), 1.0 / (summary.lr * summary.num_steps))
        steps = {"k": torch.as_tensor(summary.num_steps, dtype=torch.get_default_dtype())}
        return {"g": g, "num_steps": steps}, ctx.client_state

    def upload_weights(self, num_samples: int) -> dict[str, float]:
        return {"g": 1.0, "num_steps": 1.0}
