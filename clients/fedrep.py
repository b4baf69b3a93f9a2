"""FedRep: a shared representation (body), a private head per client, trained one after the other.

Collins et al., "Exploiting Shared Representations for Personalized Federated Learning", ICML
2021, Algorithm 1. Each round a client first trains its own head with the body frozen, then the
body with its new head frozen, and uploads the body only; the head stays in its state, as in
FedPer (`clients.fedper`), whose split into body and head (`head_layers`) it shares.

The paper runs 10 local epochs on the head and 1 on the body. Here a round's local schedule
(`train.local_epochs` / `train.local_steps`) is split: of a client's n scheduled steps the first
floor(head_fraction * n) train the head and the rest the body, so the default 10/11 with
`train.local_epochs = 11` is the paper's setting, and the body always gets at least one step.
A frozen part keeps its values and its optimiser state (SGD momentum), as if the phase's
optimiser held only the part it trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from clients.fedper import FedPer
from fedsim import tree
from fedsim.config import option
from fedsim.strategy import Batch, GradFn, LocalContext, State, Strategy
from fedsim.trainer import ClientTrainer
from fedsim.tree import Params

STEP = "step"  # the index of the client's next local step this round


@dataclass
class FedRep(FedPer):
    """FedRep: the head (last `head_layers` layers) for the first `head_fraction` of a round's steps, then the body."""

    name: ClassVar[str] = "fedrep"

    head_fraction: float = option(10 / 11, ge=0, lt=1)

    def begin(self, params: Params, state: State, ctx: LocalContext) -> State:
        opt = {STEP: torch.zeros((), dtype=torch.int64, device=next(iter(params.values())).device)}
        if self.sgd.momentum > 0:  # present from the start, so a frozen part keeps its (zero) velocity
            opt["velocity"] = tree.zeros_like(params)
        return opt

    def step(
        self, params: Params, opt: State, carry: State, batch: Batch, grad_fn: GradFn, strategy: Strategy,
        ctx: LocalContext,
    ) -> tuple[torch.Tensor, Params, State, State]:
        head_steps = torch.floor(self.head_fraction * torch.as_tensor(ctx.num_steps))
        training_head = opt[STEP] < head_steps
        optimiser = {k: v for k, v in opt.items() if k != STEP}
        loss, stepped, new_optimiser, carry = ClientTrainer.step(
            self, params, optimiser, carry, batch, grad_fn, strategy, ctx
        )

        def trained(new: Params, old: Params) -> Params:
            """`new` where the current phase trains, `old` where it is frozen."""
            return {
                k: torch.where(training_head if k in self.head else ~training_head, new[k], old[k]) for k in new
            }

        new_opt = {k: trained(v, optimiser[k]) for k, v in new_optimiser.items()}
        return loss, trained(stepped, params), {**new_opt, STEP: opt[STEP] + 1}, carry
