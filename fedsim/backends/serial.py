"""The reference backend: one process, one client after another."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import torch

from fedsim import tree
from fedsim.backends.base import Backend, RoundOutput, RoundPlan, Task
from fedsim.backends.collect import RoundCollector
from fedsim.errors import plugin_code
from fedsim.local import ClientJob
from fedsim.population import ClientView
from fedsim.schedule import cohort_batches
from fedsim.strategy import State
from fedsim.trainer import split_state


def to_device(state: State, device: torch.device) -> State:
    return {group: tree.to(params, device) for group, params in state.items()}


class SerialExecutor:
    """Trains clients one by one with `ClientTrainer.train`: the model and gradient function built
    once, each client materialised on the device when it trains.

    The one-by-one executor of every backend: the serial backend, each Ray worker, each Flower client.
    """

    def __init__(self, task: Task) -> None:
        self.task = task
        self.env = task.local_env(task.model.to(task.device))
        self.clients = ClientView(task.clients, task.device)

    def run(self, plan: RoundPlan, client_ids: list[int]) -> RoundOutput:
        """Train `client_ids` with `plan` and reduce their updates, in the order of `client_ids`."""
        collector = RoundCollector(self.task.strategy)
        for cid, job in zip(client_ids, self.jobs(plan, client_ids)):
            with self.task.memory_meter() as memory, plugin_code(plan.round, [cid]):
                update = self.task.trainer.train(job, self.env)
            if self.task.attack:
                update = replace(update, upload=self.task.attack.corrupt(plan.round, cid, update.upload))
            collector.add(cid, update, memory.activation_bytes, memory.cuda_bytes)
        return collector.output(client_ids)

    def jobs(self, plan: RoundPlan, client_ids: list[int]) -> Iterator[ClientJob]:
        """Each client's `ClientJob` of the round, on the device, its batches planned in one call."""
        task, device = self.task, self.task.device
        global_params = tree.to(plan.global_params, device)
        broadcast = to_device(plan.broadcast, device)
        clients = [self.clients[cid] for cid in client_ids]
        works = [plan.work[cid] for cid in client_ids]
        batches = cohort_batches(task.schedule, task.seed, plan.round, client_ids, [len(c.y) for c in clients], works)
        for i, cid in enumerate(client_ids):
            strategy_state, trainer_state = split_state(to_device(plan.client_states[cid], device))
            yield ClientJob(
                cid, plan.round, plan.lr, global_params, broadcast, strategy_state, trainer_state,
                clients[i].data, batches[i], clients[i].unlabelled, works[i],
            )


class SerialBackend(Backend):
    """Trains the cohort client by client, in order."""

    name = "serial"

    def __init__(self, task: Task) -> None:
        super().__init__(task)
        self.executor = SerialExecutor(task)

    def run_round(self, plan: RoundPlan) -> RoundOutput:
        return self.run(plan, plan.client_ids)

    def run(self, plan: RoundPlan, client_ids: list[int]) -> RoundOutput:
        """Train `client_ids` (also a Ray worker's share)."""
        return self.executor.run(plan, client_ids)
