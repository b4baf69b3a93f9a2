"""The messages of one client's round: what a process that trains clients holds (`LocalEnv`),
what a client receives (`ClientJob`) and what it returns (`ClientUpdate`). The loop that turns
one into the other is `fedsim.trainer.local_loop`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fedsim.schedule import LocalSchedule
from fedsim.strategy import GradFn, LocalContext, State, Strategy
from fedsim.tree import Params


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
    unlabelled: torch.Tensor  # its inputs without a label (empty unless data.label_ratio < 1)
    work: float = 1.0  # share of its local steps it completes

    def context(self) -> LocalContext:
        return LocalContext(self.global_params, self.broadcast, self.strategy_state, self.lr, len(self.batches))


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
