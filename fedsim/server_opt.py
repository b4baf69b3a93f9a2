"""Server optimisers: the server's step along the round's pseudo-gradient (Reddi et al., ICLR 2021, Alg. 2).

The pseudo-gradient is the mean client delta `g = mean_i (x - y_i)` (`aggregate.means["delta"]`).
It points uphill like a gradient; the paper's Delta is -g, so its `x + eta m / (sqrt(v) + tau)`
is `x - eta m / (sqrt(v) + tau)` here, with m built from g (v, built from squares, is unchanged).
A strategy keeps an optimiser's state in its server state and calls `step` once a round
(`ServerOptimised` does both for a strategy that names its `optimiser()`):

    SGD       v <- momentum v + g                       x <- x - lr v         (FedAvgM, heavy ball)
    Adaptive  m <- beta_1 m + (1 - beta_1) g
              v <- v + g^2                              (adagrad)
              v <- beta_2 v + (1 - beta_2) g^2          (adam)
              v <- v - (1 - beta_2) g^2 sign(v - g^2)   (yogi)
              x <- x - lr_r m / (sqrt(v) + tau)

State keys follow each paper: Hsu et al.'s velocity `v`; Reddi et al.'s moments `m` and `v`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedsim import tree
from fedsim.strategy import Aggregate, RoundInfo, State, Strategy
from fedsim.tree import Params

SECOND_MOMENTS = {
    "adagrad": lambda v, g2, beta_2: v + g2,
    "adam": lambda v, g2, beta_2: beta_2 * v + (1 - beta_2) * g2,
    "yogi": lambda v, g2, beta_2: v - (1 - beta_2) * g2 * torch.sign(v - g2),
}


@dataclass(frozen=True)
class SGD:
    """SGD with heavy-ball momentum, no dampening or Nesterov (torch.optim.SGD's and Flower FedAvgM's)."""

    lr: float
    momentum: float = 0.0

    def init(self, params: Params) -> State:
        return {"v": tree.zeros_like(params)}

    def step(self, params: Params, state: State, grad: Params, round_: int) -> tuple[Params, State]:
        velocity = tree.add(grad, state["v"], self.momentum)
        return tree.add(params, velocity, -self.lr), {"v": velocity}


@dataclass(frozen=True)
class Adaptive:
    """Adagrad, Adam or Yogi (`rule`, a key of SECOND_MOMENTS) with first-moment decay beta_1.

    `v_init` is v_{-1} (Algorithm 2's analysis asks for v_{-1} >= tau^2; the authors' experiment
    code and Flower start at 0). `beta_2` is unused by adagrad. `bias_correction` is Flower
    FedAdam's step size at server round r (counted from 1),
    lr_r = lr sqrt(1 - beta_2^(r+1)) / (1 - beta_1^(r+1)); without it lr_r = lr, as in the paper.
    """

    rule: str
    lr: float
    beta_1: float
    beta_2: float
    tau: float
    v_init: float = 0.0
    bias_correction: bool = False

    def init(self, params: Params) -> State:
        v = {k: torch.full_like(p, self.v_init) for k, p in params.items()}
        return {"m": tree.zeros_like(params), "v": v}

    def step(self, params: Params, state: State, grad: Params, round_: int) -> tuple[Params, State]:
        second_moment = SECOND_MOMENTS[self.rule]
        m = {k: self.beta_1 * state["m"][k] + (1 - self.beta_1) * g for k, g in grad.items()}
        v = {k: second_moment(state["v"][k], g * g, self.beta_2) for k, g in grad.items()}
        lr = self.lr
        if self.bias_correction:
            lr *= math.sqrt(1 - self.beta_2 ** (round_ + 1)) / (1 - self.beta_1 ** (round_ + 1))
        direction = {k: m[k] / (v[k].sqrt() + self.tau) for k in m}
        return tree.add(params, direction, -lr), {"m": m, "v": v}


class ServerOptimised(Strategy):
    """A strategy whose server steps along the round's mean client delta with `optimiser()`, its
    state the optimiser's (FedAvgM, FedAdam, FedYogi, FedAdagrad)."""

    def optimiser(self) -> SGD | Adaptive:
        """The server optimiser of this rule, built from the strategy's fields."""
        raise NotImplementedError

    def init_server_state(self, params: Params) -> State:
        return self.optimiser().init(params)

    def server_update(
        self, params: Params, server_state: State, aggregate: Aggregate, info: RoundInfo
    ) -> tuple[Params, State]:
        return self.optimiser().step(params, server_state, aggregate.means["delta"], info.round)
