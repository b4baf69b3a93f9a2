"""The backend interface: where a round's local training runs.

Every backend takes the same `Task` once and the same `RoundPlan` each round, and returns
the same `RoundOutput`; the engine does not know which one it talks to.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from fedsim.aggregate import WeightedSum
from fedsim.attacks import Attack
from fedsim.local import LocalEnv
from fedsim.memory import MemoryMeter
from fedsim.population import Population
from fedsim.schedule import LocalSchedule
from fedsim.strategy import GradFn, State, Strategy
from fedsim.trainer import ClientTrainer
from fedsim.tree import Params


@dataclass
class Task:
    """Everything fixed for a whole run, handed to a backend once."""

    seed: int
    model: nn.Module  # the network clients train (the trainer's `build_model`), built once
    strategy: Strategy
    trainer: ClientTrainer
    clients: Population  # every client's data, materialised when a round trains it
    schedule: LocalSchedule
    device: torch.device
    track_memory: bool = False  # meter each client's peak activation bytes (engine.track_memory)
    attack: Attack | None = None  # the Byzantine clients' upload attack (fedsim.attacks), if any

    def grad_fn(self, model: nn.Module, functional: bool = False) -> GradFn:
        """The trainer's gradient function of `model` and the strategy's objective; `functional=True`
        gives one that composes with `torch.func.vmap`."""
        return self.trainer.grad_fn(model, self.strategy.objective, functional)

    def local_env(self, model: nn.Module) -> LocalEnv:
        """What a one-by-one executor trains every client with."""
        return LocalEnv(self.strategy, model, self.grad_fn(model), self.schedule, self.seed)

    def memory_meter(self) -> MemoryMeter:
        """The meter a backend trains each client inside (activations only with `track_memory`)."""
        return MemoryMeter(self.device, activations=self.track_memory)


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
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. a client's pseudo-labels
    peak_activation_bytes: int = 0  # peak bytes saved for backward (Task.track_memory), fedsim/memory.py
    peak_cuda_bytes: int = 0  # torch.cuda.max_memory_allocated while the client trained (0 on the CPU)


@dataclass
class RoundOutput:
    """A round's results: the reduced uploads, and per-client states and reports in cohort order."""

    total: WeightedSum
    uploads: list[State] | None  # only for strategies that need every upload
    client_states: dict[int, State]
    reports: list[ClientReport]


class Backend(ABC):
    """Runs local training for the sampled clients of each round."""

    name: ClassVar[str]  # its `engine.backend` name, recorded in the run (what "auto" chose)

    def __init__(self, task: Task) -> None:
        self.task = task

    @abstractmethod
    def run_round(self, plan: RoundPlan) -> RoundOutput: ...

    def close(self) -> None:
        """Release workers and memory; called once, also after an error."""
