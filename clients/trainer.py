"""The local-training loop one client runs in a round.

The strategy decides the descent direction of each step (`Strategy.local_step`); this loop
owns what every strategy shares: the seeded batch order, gradient clipping, weight decay,
SGD momentum and the NaN check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedsim import seeding, tree
from fedsim.errors import TrainingDiverged
from fedsim.strategy import GradFn, LocalContext, LocalSummary, State, Strategy
from fedsim.tree import Params


@dataclass(frozen=True)
class LocalSchedule:
    """How long and how a client trains in one round."""

    epochs: int
    steps: int  # > 0 overrides epochs
    batch_size: int
    weight_decay: float = 0.0
    momentum: float = 0.0
    clip_norm: float = 0.0

    def num_steps(self, num_samples: int, work: float = 1.0) -> int:
        """Local steps of a client with `num_samples` samples: E * ceil(n / B), or `steps`,
        scaled by the share of its work the client completes (at least one step)."""
        full = self.steps if self.steps > 0 else self.epochs * math.ceil(num_samples / self.batch_size)
        return max(1, math.ceil(work * full - 1e-9))


@dataclass
class ClientResult:
    """What a client returns to the engine after one round."""

    client_id: int
    upload: State
    client_state: State
    num_samples: int
    num_steps: int
    loss: float  # mean local loss over the steps


def batch_indices(num_samples: int, num_steps: int, batch_size: int, generator: torch.Generator):
    """Yield `num_steps` index tensors: a fresh seeded permutation per epoch, the last batch may be short."""
    remaining = num_steps
    while remaining > 0:
        perm = torch.randperm(num_samples, generator=generator)
        for start in range(0, num_samples, batch_size):
            yield perm[start : start + batch_size]
            remaining -= 1
            if remaining == 0:
                return


def apply_step(
    params: Params, direction: Params, velocity: Params | None, lr: float, schedule: LocalSchedule
) -> tuple[Params, Params | None]:
    """One SGD step in torch.optim.SGD order: clip, add weight decay, momentum, descend."""
    if schedule.clip_norm > 0:
        factor = torch.clamp(schedule.clip_norm / (tree.norm(direction) + 1e-6), max=1.0)
        direction = tree.scale(direction, factor)
    if schedule.weight_decay > 0:
        direction = tree.add(direction, params, schedule.weight_decay)
    if schedule.momentum > 0:
        velocity = direction if velocity is None else tree.add(direction, velocity, schedule.momentum)
        direction = velocity
    return tree.add(params, direction, -lr), velocity


def train_client(
    *,
    client_id: int,
    data: tuple[torch.Tensor, torch.Tensor],
    strategy: Strategy,
    grad_fn: GradFn,
    ctx: LocalContext,
    schedule: LocalSchedule,
    seed: int,
    round_: int,
    work: float = 1.0,
) -> ClientResult:
    """Train one client from the global params for one round, doing `work` of its local steps."""
    x, y = data
    num_samples = len(y)
    generator = seeding.torch_generator(seed, "shuffle", round_, client_id)
    params = ctx.global_params
    velocity = None
    carry = strategy.client_begin(ctx)
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    steps = 0
    num_steps = schedule.num_steps(num_samples, work)
    for idx in batch_indices(num_samples, num_steps, schedule.batch_size, generator):
        idx = idx.to(x.device)
        loss, direction, carry = strategy.local_step(params, (x[idx], y[idx]), grad_fn, carry, ctx)
        params, velocity = apply_step(params, direction, velocity, ctx.lr, schedule)
        loss_sum += loss.detach()
        steps += 1
    mean_loss = float(loss_sum) / max(steps, 1)
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(round_, client_id, mean_loss)
    summary = LocalSummary(num_steps=steps, num_samples=num_samples, lr=ctx.lr)
    upload, client_state = strategy.client_end(params, carry, ctx, summary)
    return ClientResult(client_id, upload, client_state, num_samples, steps, mean_loss)
