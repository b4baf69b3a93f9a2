"""Local Adam: each client steps with Adam, and its moments persist across the rounds it joins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedsim import tree
from fedsim.strategy import LocalContext, LocalSummary, State
from fedsim.trainer import ClientTrainer
from fedsim.tree import Params


@dataclass
class LocalAdam(ClientTrainer):
    """Local Adam: torch.optim.Adam's update on each client, its moments kept in client state.

    Per step, with the strategy's direction g (the gradient for FedAvg), t counting the client's
    steps over all its rounds: m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2,
    params <- params - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps). A client's m, v and t
    start at 0 and carry over from one of its rounds to the next; its params start each round
    from the global model. The `[train]` momentum, weight decay and clipping do not apply.
    """

    name: ClassVar[str] = "local_adam"

    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def init_state(self, params: Params) -> State:
        return {"m": tree.zeros_like(params), "v": tree.zeros_like(params), "t": {"t": torch.zeros(())}}

    def begin(self, params: Params, state: State, ctx: LocalContext) -> State:
        return dict(state)

    def update(self, params: Params, direction: Params, opt: State, lr: float) -> tuple[Params, State]:
        t = opt["t"]["t"] + 1
        m = tree.lerp(opt["m"], direction, 1 - self.beta1)
        v = tree.lerp(opt["v"], {k: g * g for k, g in direction.items()}, 1 - self.beta2)
        m_scale = lr / (1 - self.beta1**t)
        v_scale = 1 / (1 - self.beta2**t)
        params = {k: p - m_scale * m[k] / ((v[k] * v_scale).sqrt() + self.eps) for k, p in params.items()}
        return params, {"m": m, "v": v, "t": {"t": t}}

    def end(self, params: Params, opt: State, state: State, summary: LocalSummary) -> State:
        return opt
