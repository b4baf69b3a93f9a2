"""One client's round: what it receives (`ClientJob`), what it returns (`ClientUpdate`), and
the local loop (`local_loop`) that the one-by-one executors run for every trainer that does not
override `ClientTrainer.train`. The vectorized backend runs the same trainer and strategy hooks
over a stacked chunk of clients (fedsim.backends.vectorized)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedsim.errors import TrainingDiverged
from fedsim.schedule import LocalSchedule
from fedsim.strategy import GradFn, LocalContext, LocalSummary, State, Strategy
from fedsim.tree import Params

if TYPE_CHECKING:
    from fedsim.trainer import ClientTrainer


@dataclass(frozen=True)
class LocalEnv:
    """What a process that trains clients holds for the whole run: built once, shared by its clients."""

    strategy: Strategy
    model: nn.Module  # the network clients train (evaluated with `functional_call`)
    grad_fn: GradFn  # the trainer's gradient function of `model` and the strategy's objective
    schedule: LocalSchedule
    seed: int


@dataclass(frozen=True)
class ClientJob:
    """One client's inputs of one round, on the device it trains on."""

    client_id: int
    round: int
    lr: float
    global_params: Params
    broadcast: State
    strategy_state: State
    trainer_state: State
    data: tuple[torch.Tensor, torch.Tensor]  # its labelled (x, y)
    batches: list[torch.Tensor]  # index tensors into `data`: the round's local schedule
    unlabelled: torch.Tensor | None = None  # its inputs without a label (data.label_ratio < 1)
    work: float = 1.0  # share of its local steps it completes

    def context(self) -> LocalContext:
        return LocalContext(self.global_params, self.broadcast, self.strategy_state, self.lr)


@dataclass
class ClientUpdate:
    """What a client returns after one round."""

    upload: State
    strategy_state: State
    trainer_state: State
    num_samples: int  # its weight in the server's means
    num_steps: int
    loss: float  # mean local loss over its steps
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. its pseudo-labels


class LocalRun:
    """The evolving local model of one client-round: params, optimiser state, carry, loss sum, steps."""

    def __init__(self, trainer: ClientTrainer, job: ClientJob, env: LocalEnv) -> None:
        self.trainer, self.env, self.ctx = trainer, env, job.context()
        self.params: Params = job.global_params
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
        summary = LocalSummary(num_steps=self.steps, num_samples=num_samples, lr=job.lr)
        upload, strategy_state = self.env.strategy.client_end(self.params, self.carry, self.ctx, summary)
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
