"""Ditto: a personal model per client, pulled towards the global one.

Li et al., "Ditto: Fair and Robust Federated Learning Through Personalization", ICML 2021,
Algorithm 1. Every local step trains the global model as the strategy says (FedAvg: plain SGD),
and the client's personal model v with the same batch on

    v <- v - eta_v * (grad F_k(v) + lambda * (v - w_t))

where w_t is the round's global model. The global update is uploaded; v stays in the client's
state and is its personal model. A client's first v is the global model of its first round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedsim import tree
from fedsim.config import option
from fedsim.strategy import Batch, GradFn, LocalContext, LocalSummary, State, Strategy
from fedsim.trainer import ClientTrainer
from fedsim.tree import Params

PERSONAL = "personal"


@dataclass
class Ditto(ClientTrainer):
    """Ditto: `lam` is lambda, the pull to the global model; `personal_lr` eta_v (0 = the round's lr)."""

    name: ClassVar[str] = "ditto"

    lam: float = option(0.1, ge=0)
    personal_lr: float = option(0.0, ge=0)

    def init_state(self, params: Params) -> State:
        return {PERSONAL: tree.clone(params)}

    def begin(self, params: Params, state: State, ctx: LocalContext) -> State:
        return {PERSONAL: state[PERSONAL]}

    def step(
        self, params: Params, opt: State, carry: State, batch: Batch, grad_fn: GradFn, strategy: Strategy,
        ctx: LocalContext,
    ) -> tuple[torch.Tensor, Params, State, State]:
        personal = opt[PERSONAL]
        optimiser = {k: v for k, v in opt.items() if k != PERSONAL}
        loss, params, optimiser, carry = super().step(params, optimiser, carry, batch, grad_fn, strategy, ctx)
        _, grads = grad_fn(personal, batch)
        pull = tree.add(grads, tree.sub(personal, ctx.global_params), self.lam)
        personal = tree.add(personal, pull, -(self.personal_lr or ctx.lr))
        return loss, params, {**optimiser, PERSONAL: personal}, carry

    def end(self, params: Params, opt: State, state: State, summary: LocalSummary) -> State:
        return {PERSONAL: opt[PERSONAL]}

    def personal_params(self, global_params: Params, state: State) -> Params:
        return state[PERSONAL]
