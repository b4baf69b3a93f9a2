"""FedBN: every BatchNorm layer stays on the client, with its own running statistics.

Li et al., "FedBN: Federated Learning on Non-IID Features via Local Batch Normalization", ICLR
2021, Algorithm 1. Clients train the whole network as the strategy says (FedAvg in the paper);
the BatchNorm weights and biases are private (reset to the global values before the upload, so
their delta is zero and the server never moves them), and each client keeps the running mean and
variance of its own data, updated at every local step with torch's rule
(`fedsim.normalisation`). A client's personal model is the global model with its BatchNorm
layers; a client that has never trained has the initial ones.

The global model keeps its initial BatchNorm layers (weight 1, bias 0, mean 0, variance 1):
like FedPer's global head, it is not a model anyone uses, so its central test accuracy says
little; the clients' personal accuracy is FedBN's result. The statistics of a step are taken in
a forward pass of their own, before the step's update, at the params torch would take them at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fedsim import tree
from fedsim.errors import ConfigError
from fedsim.normalisation import STATISTICS, batch_norms, batch_statistics, statistic_name, updated_statistics
from fedsim.strategy import Batch, GradFn, LocalContext, LocalSummary, State, Strategy
from fedsim.trainer import ClientTrainer
from fedsim.tree import Params

NORM, RUNNING = "norm", "statistics"  # a client's BatchNorm params and its running statistics


@dataclass
class FedBN(ClientTrainer):
    """FedBN: BatchNorm weights, biases and running statistics are private to each client."""

    name: ClassVar[str] = "fedbn"
    keeps_statistics: ClassVar[bool] = True

    def prepare(self, model: nn.Module, params: Params) -> Params:
        layers = batch_norms(model)
        if not layers:
            raise ConfigError(
                "trainer 'fedbn' keeps a model's BatchNorm layers on the clients, but this model has none; "
                "use model.name='cnn' with model.cnn.norm='batch'"
            )
        self.network = model  # batch statistics are taken with it
        self.norm = [k for k in params if tree.module_of(k) in layers]
        self.initial = {
            statistic_name(name, s): getattr(layer, s).detach().clone()
            for name, layer in layers.items()
            for s in STATISTICS
        }
        return params

    def init_state(self, params: Params) -> State:
        return {NORM: tree.clone({k: params[k] for k in self.norm}), RUNNING: tree.clone(self.initial)}

    def start_params(self, params: Params, state: State) -> Params:
        return {**params, **state[NORM]}

    def begin(self, params: Params, state: State, ctx: LocalContext) -> State:
        return {RUNNING: state[RUNNING]}

    def step(
        self, params: Params, opt: State, carry: State, batch: Batch, grad_fn: GradFn, strategy: Strategy,
        ctx: LocalContext,
    ) -> tuple[torch.Tensor, Params, State, State]:
        running = updated_statistics(self.network, opt[RUNNING], batch_statistics(self.network, params, batch[0]))
        optimiser = {k: v for k, v in opt.items() if k != RUNNING}
        loss, params, optimiser, carry = super().step(params, optimiser, carry, batch, grad_fn, strategy, ctx)
        return loss, params, {**optimiser, RUNNING: running}, carry

    def shared_params(self, params: Params, global_params: Params) -> Params:
        return {**params, **{k: global_params[k] for k in self.norm}}

    def end(self, params: Params, opt: State, state: State, summary: LocalSummary) -> State:
        return {NORM: {k: params[k] for k in self.norm}, RUNNING: opt[RUNNING]}

    def personal_params(self, global_params: Params, state: State) -> Params:
        return {**global_params, **state[NORM], **state[RUNNING]}
