"""Local DP-SGD: each client trains with per-sample gradient clipping and Gaussian noise per step.

Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, Algorithm 1, as Opacus runs
it: each sample's gradient (over all parameters, `torch.func` per-sample gradients) is scaled to
norm at most C (factor min(1, C / (norm + 1e-6))), the batch's clipped gradients are summed,
noise N(0, (sigma C)^2) is added per coordinate, and the sum is divided by the batch size. The
strategy then turns this gradient into its descent direction as usual, so DP-SGD composes with
any strategy. The noise of client i in round r is drawn on the CPU from (seed, round, client),
one draw per parameter in the model's order, as Opacus's DPOptimizer draws it; a test checks
one step against Opacus's to float round-off.

This protects each sample of a client's data (sample-level DP), not the client as a whole
(user-level: `strategy.name = "dp_fedavg"`). The privacy a client spends follows from Opacus's
accountant with sampling rate batch_size / n_i and the client's total local steps; it is not
reported per round. One client at a time (the noise has a generator per client): serial, ray
and flower.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fedsim import seeding
from fedsim.config import option
from fedsim.gradients import Objective
from fedsim.local import ClientJob, ClientUpdate, LocalEnv
from fedsim.strategy import Batch, GradFn
from fedsim.trainer import ClientTrainer, local_loop
from fedsim.tree import Params


def private_grad_fn(
    model: nn.Module, objective: Objective, clip_norm: float, noise_multiplier: float, generator: torch.Generator
) -> GradFn:
    """`grad_fn(params, batch) -> (mean loss, clipped noised mean gradient)`, DP-SGD's gradient."""

    def sample_loss(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return objective(functional_call(model, params, (x[None],)), y[None])

    per_sample = vmap(grad_and_value(sample_loss), in_dims=(None, 0, 0))

    def grad_fn(params: Params, batch: Batch) -> tuple[torch.Tensor, Params]:
        x, y = batch
        grads, losses = per_sample(params, x, y)
        norms = torch.stack([g.reshape(len(g), -1).norm(2, dim=1) for g in grads.values()], dim=1).norm(2, dim=1)
        factor = (clip_norm / (norms + 1e-6)).clamp(max=1.0)
        std = noise_multiplier * clip_norm
        noised = {}
        for k, g in grads.items():
            noise = torch.normal(0.0, std, g.shape[1:], generator=generator).to(g)
            noised[k] = (torch.einsum("i,i...", factor.to(g), g) + noise) / len(y)
        return losses.mean().detach(), noised

    return grad_fn


@dataclass
class DPSGD(ClientTrainer):
    """Local DP-SGD: per-sample clipping to `clip_norm` C, noise `noise_multiplier` sigma per step."""

    name: ClassVar[str] = "dp_sgd"
    vectorizes: ClassVar[bool] = False  # each client's noise comes from its own generator

    clip_norm: float = option(1.0, gt=0)
    noise_multiplier: float = option(1.0, gt=0)

    def train(self, job: ClientJob, env: LocalEnv) -> ClientUpdate:
        generator = seeding.torch_generator(env.seed, "dp_sgd", job.round, job.client_id)
        grad_fn = private_grad_fn(env.model, env.strategy.objective, self.clip_norm, self.noise_multiplier, generator)
        return local_loop(self, job, replace(env, grad_fn=grad_fn))
