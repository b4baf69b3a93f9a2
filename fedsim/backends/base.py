"""The backend interface: where a round's local training runs.

Every backend takes the same `Task` once and the same `RoundPlan` each round, and returns
the same `RoundOutput`; the engine does not know which one it talks to.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from clients.backprop import autograd_grad_fn, functional_grad_fn
from clients.trainer import LocalSchedule
from fedsim.aggregate import WeightedSum
from fedsim.strategy import GradFn, State, Strategy
from fedsim.tree import Params


@dataclass
class Task:
    """Everything fixed for a whole run, handed to a backend once."""

    seed: int
    model_fn: Callable[[], nn.Module]
    strategy: Strategy
    client_data: list[tuple[torch.Tensor, torch.Tensor]]  # per client (x, y), on the CPU
    schedule: LocalSchedule
    device: torch.device

    def grad_fn(self, model: nn.Module, functional: bool = False) -> GradFn:
        """The gradient function clients train with; `functional=True` gives one that composes
        with `torch.func.vmap`."""
        build = functional_grad_fn if functional else autograd_grad_fn
        return build(model, self.strategy.objective)


@dataclass
class RoundPlan:
    """One round's work: which clients train, from which global state."""

    round: int
    lr: float
    global_params: Params
    broadcast: State
    client_ids: list[int]
    client_states: dict[int, State]  # every sampled client's state (initialised when new)
    work: dict[int, float]  # share of its local steps each client completes (system heterogeneity)


@dataclass(frozen=True)
class ClientReport:
    """Per-client diagnostics of one round."""

    client_id: int
    num_samples: int
    num_steps: int
    loss: float


@dataclass
class RoundOutput:
    """A round's results: the reduced uploads, and per-client states and reports in cohort order."""

    total: WeightedSum
    uploads: list[State] | None  # only for strategies that need every upload
    client_states: dict[int, State]
    reports: list[ClientReport]


class Backend(ABC):
    """Runs local training for the sampled clients of each round."""

    def __init__(self, task: Task) -> None:
        self.task = task

    @abstractmethod
    def run_round(self, plan: RoundPlan) -> RoundOutput: ...

    def close(self) -> None:
        """Release workers and memory; called once, also after an error."""
