"""The reference backend: one process, one client after another."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from clients.semi_supervised import SemiSupervisedStrategy, train_semi_supervised_client
from clients.trainer import train_client
from fedsim import tree
from fedsim.aggregate import WeightedSum
from fedsim.backends.base import Backend, ClientReport, RoundOutput, RoundPlan, Task
from fedsim.errors import ConfigError
from fedsim.strategy import LocalContext


class SerialBackend(Backend):
    """Builds the model once, keeps every client's data on the device, trains clients in order."""

    def __init__(self, task: Task) -> None:
        super().__init__(task)
        self.model = task.model_fn().to(task.device)
        self.grad_fn = task.grad_fn(self.model)
        self.data = [(x.to(task.device), y.to(task.device)) for x, y in task.client_data]
        self.unlabelled = [u.to(task.device) for u in task.unlabelled_data]

    def run_round(self, plan: RoundPlan) -> RoundOutput:
        return train_cohort(
            self.task, self.grad_fn, self.data, plan, plan.client_ids,
            model=self.model, unlabelled=self.unlabelled,
        )


def train_cohort(
    task: Task,
    grad_fn,
    data,
    plan: RoundPlan,
    client_ids: list[int],
    *,
    model: nn.Module | None = None,
    unlabelled: Sequence[torch.Tensor] = (),
) -> RoundOutput:
    """Train `client_ids` one after another and reduce their uploads (shared with Ray workers).

    A semi-supervised strategy's clients also need the `model` (to evaluate their experts) and
    their `unlabelled` inputs on the device; a backend that passes neither cannot run them.
    """
    strategy, device = task.strategy, task.device
    semi_supervised = isinstance(strategy, SemiSupervisedStrategy)
    if semi_supervised and model is None:
        raise ConfigError(
            f"strategy '{strategy.name}' is semi-supervised; this backend cannot run it; "
            "use engine.backend=serial"
        )
    global_params = tree.to(plan.global_params, device)
    broadcast = {g: tree.to(p, device) for g, p in plan.broadcast.items()}
    total = WeightedSum()
    uploads = [] if strategy.needs_all_uploads else None
    states, reports = {}, []
    for cid in client_ids:
        state = {g: tree.to(p, device) for g, p in plan.client_states[cid].items()}
        ctx = LocalContext(global_params, broadcast, state, plan.lr)
        client = {
            "client_id": cid,
            "data": data[cid],
            "strategy": strategy,
            "grad_fn": grad_fn,
            "ctx": ctx,
            "schedule": task.schedule,
            "seed": task.seed,
            "round_": plan.round,
            "work": plan.work[cid],
        }
        with task.memory_meter() as memory:
            if semi_supervised:
                result, diagnostics = train_semi_supervised_client(
                    **client, unlabelled=unlabelled[cid], model=model
                )
            else:
                result, diagnostics = train_client(**client), {}
        total.add(result.upload, strategy.upload_weights(result.num_samples))
        if uploads is not None:
            uploads.append(result.upload)
        states[cid] = result.client_state
        reports.append(
            ClientReport(
                cid, result.num_samples, result.num_steps, result.loss, diagnostics,
                memory.activation_bytes, memory.cuda_bytes,
            )
        )
    return RoundOutput(total, uploads, states, reports)
