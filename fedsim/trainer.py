"""The client-trainer interface: how one client turns a round's inputs into its update.

A trainer is a dataclass whose fields are its hyperparameters (the `[trainer]` table of a
config). The base class is plain backpropagation with the `[train]` SGD settings; a new
client-side algorithm overrides only what differs, as a strategy does on the server side.
Trainer and strategy compose: the strategy decides the descent direction of a step and what
is uploaded; the trainer decides how gradients are taken, how the local optimiser steps, and
what it keeps on the client between rounds.

One client's round, as every executor runs it (`local_loop` one client at a time, the
vectorized backend's vmapped ticks for a chunk of clients at once)::

    ctx    = LocalContext(global_params, broadcast, strategy_state, lr, num_steps)
    params = trainer.start_params(global_params, trainer_state)    # e.g. with a private head
    opt    = trainer.begin(global_params, trainer_state, ctx)      # optimiser state of the round
    carry  = strategy.client_begin(ctx)
    for batch in the client's schedule (fedsim.schedule: the same batches on every backend):
        loss, params, opt, carry = trainer.step(params, opt, carry, batch, grad_fn, strategy, ctx)
    upload, strategy_state = strategy.client_end(trainer.shared_params(params, global_params), carry, ctx, summary)
    trainer_state = trainer.end(params, opt, trainer_state, summary)

A personalised trainer keeps a model of each client's own in its state and says which it is
(`personal_params`); federated evaluation then scores each client's personal model too.

`begin`, `step`, `update` and `end` are pure tensor functions (no Python branching on tensor
values), so a trainer with `vectorizes = True` runs unchanged under `torch.func.vmap`. A
trainer whose round does not fit this loop (pseudo-labelling between two phases) overrides
`train`, sets `vectorizes = False`, and runs on the serial, ray and flower backends.

A client's persistent state holds the strategy's groups (SCAFFOLD's `c`) and the trainer's
(`init_state`), the latter stored under `TRAINER_PREFIX`; each side only ever sees its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fedsim import tree
from fedsim.errors import TrainingDiverged
from fedsim.gradients import Objective, autograd_grad_fn, functional_grad_fn
from fedsim.local import ClientJob, ClientUpdate, LocalEnv
from fedsim.strategy import Batch, GradFn, LocalContext, LocalSummary, State, Strategy
from fedsim.tree import Params

TRAINER_PREFIX = "trainer."  # state groups of the trainer inside a client's stored state


def split_state(state: State) -> tuple[State, State]:
    """A client's stored state as (strategy groups, trainer groups without the prefix)."""
    strategy = {g: p for g, p in state.items() if not g.startswith(TRAINER_PREFIX)}
    trainer = {g.removeprefix(TRAINER_PREFIX): p for g, p in state.items() if g.startswith(TRAINER_PREFIX)}
    return strategy, trainer


def join_state(strategy_state: State, trainer_state: State) -> State:
    """The inverse of `split_state`."""
    return {**strategy_state, **{TRAINER_PREFIX + g: p for g, p in trainer_state.items()}}


@dataclass(frozen=True)
class SGDSettings:
    """The `[train]` local optimiser: torch.optim.SGD's clip -> weight decay -> momentum -> step."""

    weight_decay: float = 0.0
    momentum: float = 0.0
    clip_norm: float = 0.0


def sgd_update(
    params: Params, direction: Params, opt: State, lr: float | torch.Tensor, sgd: SGDSettings
) -> tuple[Params, State]:
    """One SGD step in torch.optim.SGD order; `opt["velocity"]` appears at the first momentum step."""
    if sgd.clip_norm > 0:
        factor = torch.clamp(sgd.clip_norm / (tree.norm(direction) + 1e-6), max=1.0)
        direction = tree.scale(direction, factor)
    if sgd.weight_decay > 0:
        direction = tree.add(direction, params, sgd.weight_decay)
    if sgd.momentum > 0:
        velocity = opt.get("velocity")
        direction = direction if velocity is None else tree.add(direction, velocity, sgd.momentum)
        opt = {**opt, "velocity": direction}
    return tree.add(params, direction, -lr), opt


@dataclass
class ClientTrainer:
    """Plain backpropagation with local SGD: the default for every hook. Subclass and override."""

    name: ClassVar[str] = "backprop"
    vectorizes: ClassVar[bool] = True  # its hooks run under vmap (the vectorized backend)
    metric_columns: ClassVar[tuple[str, ...]] = ()  # extra metrics.csv columns (`round_metrics`)
    keeps_statistics: ClassVar[bool] = False  # keeps BatchNorm running statistics (fedsim.normalisation)
    sgd: ClassVar[SGDSettings] = SGDSettings()  # the engine sets each instance's from [train]

    def validate(self) -> None:
        """Raise `ConfigError` for hyperparameter values that make no sense together."""

    # ---- once per process ---------------------------------------------------------------
    def build_model(
        self, backbone: nn.Module, input_shape: tuple[int, ...], num_classes: int, seed: int
    ) -> nn.Module:
        """The network clients train, from the model the config names (e.g. plus auxiliary nets)."""
        return backbone

    def prepare(self, model: nn.Module, params: Params) -> Params:
        """Called once with the built model's initial params; returns the params the federation
        shares (a trainer that keeps some on the client takes them out here)."""
        return params

    def network_params(self, params: Params) -> Params:
        """The params of the network `[model]` names (what `model.safetensors` holds), from the
        global params (a trainer that adds auxiliary nets leaves them out)."""
        return params

    def grad_fn(self, model: nn.Module, objective: Objective, functional: bool = False) -> GradFn:
        """`grad_fn(params, batch) -> (loss, grads)`; `functional=True`: one that composes with vmap."""
        build = functional_grad_fn if functional else autograd_grad_fn
        return build(model, objective)

    # ---- per client (pure tensor functions) ---------------------------------------------
    def init_state(self, params: Params) -> State:
        """The trainer's state of a client that has never participated ({} when it keeps none)."""
        return {}

    def start_params(self, params: Params, state: State) -> Params:
        """The params a client's round starts from, given the global ones (a trainer that keeps
        some params private to the client puts the client's own in)."""
        return params

    def shared_params(self, params: Params, global_params: Params) -> Params:
        """The locally trained params the strategy turns into the upload: private parts are reset
        to the global values here, so their update never leaves the client."""
        return params

    def personal_params(self, global_params: Params, state: State) -> Params | None:
        """The model a client of this `state` uses, for federated evaluation; None: the global one."""
        return None

    def begin(self, params: Params, state: State, ctx: LocalContext) -> State:
        """The optimiser state at the start of a client's round (SGD momentum starts empty)."""
        return {}

    def update(self, params: Params, direction: Params, opt: State, lr: float) -> tuple[Params, State]:
        """Move `params` along the descent `direction`: the local optimiser step."""
        return sgd_update(params, direction, opt, lr, self.sgd)

    def step(
        self,
        params: Params,
        opt: State,
        carry: State,
        batch: Batch,
        grad_fn: GradFn,
        strategy: Strategy,
        ctx: LocalContext,
    ) -> tuple[torch.Tensor, Params, State, State]:
        """One local step: the strategy's direction, the optimiser's update. Returns
        (loss, params, opt, carry)."""
        loss, direction, carry = strategy.local_step(params, batch, grad_fn, carry, ctx)
        params, opt = self.update(params, direction, opt, ctx.lr)
        return loss, params, opt, carry

    def end(self, params: Params, opt: State, state: State, summary: LocalSummary) -> State:
        """The trainer's new persistent state of the client (unchanged by default)."""
        return state

    # ---- the whole client round ---------------------------------------------------------
    def train(self, job: ClientJob, env: LocalEnv) -> ClientUpdate:
        """Train one client for one round: the loop of the module docstring over its schedule."""
        return local_loop(self, job, env)

    def round_metrics(self, reports: list, hidden_labels: list[torch.Tensor]) -> dict[str, float]:
        """Values of `metric_columns` for a round, from the clients' reports (diagnostics)."""
        return {}


def has_personal_models(trainer: ClientTrainer) -> bool:
    """Whether `trainer` keeps a model of each client's own (overrides `personal_params`)."""
    return type(trainer).personal_params is not ClientTrainer.personal_params


class LocalRun:
    """The evolving local model of one client-round: params, optimiser state, carry, loss sum, steps."""

    def __init__(self, trainer: ClientTrainer, job: ClientJob, env: LocalEnv) -> None:
        self.trainer, self.env, self.ctx = trainer, env, job.context()
        self.params: Params = trainer.start_params(job.global_params, job.trainer_state)
        self.opt = trainer.begin(job.global_params, job.trainer_state, self.ctx)
        self.carry = env.strategy.client_begin(self.ctx)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=job.data[1].device)
        self.steps = 0

    def step(self, batch) -> None:
        loss, self.params, self.opt, self.carry = self.trainer.step(
            self.params, self.opt, self.carry, batch, self.env.grad_fn, self.env.strategy, self.ctx
        )
        self.loss_sum += loss.detach()
        self.steps += 1

    def finish(self, job: ClientJob, num_samples: int, diagnostics=None) -> ClientUpdate:
        """The client's update; raises `TrainingDiverged` on a NaN or infinite mean loss."""
        mean_loss = float(self.loss_sum) / max(self.steps, 1)
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(job.round, job.client_id, mean_loss)
        summary = LocalSummary(self.steps, num_samples, job.lr, self.trainer.sgd.momentum)
        shared = self.trainer.shared_params(self.params, job.global_params)
        upload, strategy_state = self.env.strategy.client_end(shared, self.carry, self.ctx, summary)
        trainer_state = self.trainer.end(self.params, self.opt, job.trainer_state, summary)
        return ClientUpdate(
            upload, strategy_state, trainer_state, num_samples, self.steps, mean_loss, diagnostics or {}
        )


def local_loop(trainer: ClientTrainer, job: ClientJob, env: LocalEnv) -> ClientUpdate:
    """Train one client from the global params over its scheduled batches (`ClientTrainer.train`)."""
    x, y = job.data
    run = LocalRun(trainer, job, env)
    for idx in job.batches:
        idx = idx.to(x.device)
        run.step((x[idx], y[idx]))
    return run.finish(job, len(y))
