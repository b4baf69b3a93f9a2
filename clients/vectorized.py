"""Local training of a whole chunk of clients at once: `torch.func.vmap` over stacked parameters.

`ChunkTrainer.train` gives every client of a chunk the local run `clients.trainer.train_client`
gives it: the same seeded batches, the strategy's `client_begin` / `local_step` / `client_end`,
`apply_step`'s clip -> weight decay -> momentum -> step, and the NaN check. Only the schedule
differs: each local step is taken by all clients of the chunk in one vmapped call.

- **Ticks.** At tick t every client that still trains takes its t-th step. Clients are sorted
  by step count, longest first, so those still training are a prefix of the stacked state; a
  finished client's parameters are set aside and stop changing. A tick of at most
  `EAGER_MAX_CLIENTS` clients runs them one by one (autograd), cheaper than a vmapped call.
- **Batches.** Each client's batch order comes from the seed of `seeding.torch_generator(seed,
  "shuffle", round, client)` (a chunk's seeds derived in one call), drawn as `batch_indices`
  draws it. The round's batches are computed up front as row numbers into one device-resident
  tensor of all clients' data, so a tick gathers its inputs with one indexing op and no
  per-client Python.
- **Short batches.** A tick whose batches all have one length runs the objective unchanged.
  When lengths differ (a short last batch of an epoch, clients smaller than the batch size):
  an objective that is a mean over samples (cross-entropy; `is_sample_mean` probes it once)
  runs on batches padded to the longest, rescaled so that it equals the objective of the real
  rows (`sample_mean`). Any other objective (FedLD's batch-level margin) runs once per batch
  length, on exact-size batches of the clients whose batch has that length: exact for every
  objective, slower when many lengths meet at one tick.
- **Client end.** One vmapped `client_end` for the chunk, its `LocalSummary` counts being
  per-client tensors; a `client_end` that needs Python ints runs per group of equal counts.

Limits: in a padded tick a strategy's `local_step` sees the padded batch (targets `PAD` on the
padded rows), so it must hand the batch to `grad_fn` rather than compute with it; targets are
class indices; the model must not update buffers in place (BatchNorm's running statistics) or
draw random numbers (dropout). Results equal serial's up to float rounding: vmapped kernels
sum in another order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.func import vmap

from fedsim.gradients import Objective, autograd_grad_fn, functional_grad_fn
from clients.trainer import LocalSchedule, apply_step
from fedsim import seeding
from fedsim.errors import TrainingDiverged
from fedsim.strategy import GradFn, LocalContext, LocalSummary, State, Strategy
from fedsim.tree import Params

PAD = -1  # target of a padding row in a padded batch
PAD_LOGIT = 30.0  # a padding row's logit for class 0: cross-entropy ~1e-12, so the removed constant is ~0
VMAP_MIN_CLIENTS = 32  # shorter runs call client_end per client: a vmap call costs ~30 direct calls
EAGER_MAX_CLIENTS = 4  # ticks this small train their clients one by one, cheaper than a vmapped call


def is_sample_mean(objective: Objective, num_classes: int) -> bool:
    """Whether `objective` on a batch equals the mean of its values on single samples (probed on random logits)."""
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(6, num_classes, generator=gen)
    targets = torch.randint(0, num_classes, (6,), generator=gen)
    whole = objective(logits, targets)
    singles = torch.stack([objective(logits[i : i + 1], targets[i : i + 1]) for i in range(len(targets))])
    return bool(torch.allclose(whole, singles.mean(), rtol=1e-5, atol=1e-7))


def sample_mean(objective: Objective, num_classes: int, device: torch.device) -> Objective:
    """`objective` over the rows whose target is not `PAD`, for an objective that is a mean over samples.

    Padded rows get constant logits (`PAD_LOGIT` on class 0) and target 0, so they add a constant
    without gradient to the batch mean; rescaling by rows / real rows and removing that constant
    gives the objective of the real rows alone, with one objective call on the padded batch.
    """
    pad_logits = torch.zeros(num_classes, device=device)
    pad_logits[0] = PAD_LOGIT
    pad_value = float(objective(pad_logits[None], torch.zeros(1, dtype=torch.long, device=device)))

    def padded_objective(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        real = targets != PAD
        rows, num_real = len(targets), real.sum()
        mean = objective(
            torch.where(real[:, None], logits, pad_logits.to(logits)), torch.where(real, targets, 0)
        )
        return (rows * mean - (rows - num_real) * pad_value) / num_real

    return padded_objective


def plan_batches(
    sizes: np.ndarray,
    steps: np.ndarray,
    offsets: np.ndarray,
    seeds: np.ndarray,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Every client's batches of one round as rows of the concatenated data, drawn as `batch_indices` does.

    Client i shuffles with a generator seeded `seeds[i]` (one generator, re-seeded per client).
    Returns `rows` [clients, max steps, batch_size] and `lengths` [clients, max steps]: client i's
    t-th batch is `rows[i, t, :lengths[i, t]]` (length 0 once it has finished); the padding
    slots hold the client's first row, so a padded batch only ever reads the client's own data.
    """
    per_epoch = -(-sizes // batch_size)
    epochs = -(-steps // per_epoch)
    generator, drawn = torch.Generator(), []
    for n, e, seed in zip(sizes.tolist(), epochs.tolist(), seeds):
        generator.manual_seed(int(seed))
        drawn += [torch.randperm(n, generator=generator) for _ in range(e)]
    perms = torch.cat(drawn).numpy()
    # one block per (client, epoch), holding that epoch's permutation
    block_client = np.repeat(np.arange(len(sizes)), epochs)
    block_epoch = np.arange(len(block_client)) - np.repeat(np.cumsum(epochs) - epochs, epochs)
    block_size = sizes[block_client]
    sample_block = np.repeat(np.arange(len(block_client)), block_size)
    position = np.arange(len(perms)) - np.repeat(np.cumsum(block_size) - block_size, block_size)
    client = block_client[sample_block]
    step = block_epoch[sample_block] * per_epoch[client] + position // batch_size
    keep = step < steps[client]
    client, step, slot = client[keep], step[keep], position[keep] % batch_size
    rows = np.broadcast_to(offsets[:, None, None], (len(sizes), int(steps.max()), batch_size)).copy()
    rows[client, step, slot] = perms[keep] + offsets[client]
    lengths = np.zeros(rows.shape[:2], dtype=np.int64)
    np.add.at(lengths, (client, step), 1)
    return rows, lengths


@dataclass
class ChunkResult:
    """A trained chunk, in the trainer's order (`client_ids`); uploads and states are stacked."""

    client_ids: list[int]
    uploads: State
    client_states: State
    num_samples: list[int]
    num_steps: list[int]
    losses: list[float]  # mean local loss over each client's steps


def map_tensors(fn: Callable, *trees):
    """`fn` over the tensors of equally shaped nests of dicts and tuples (params, States, tuples of them)."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: map_tensors(fn, *(t[k] for t in trees)) for k in first}
    if isinstance(first, tuple):
        return tuple(map_tensors(fn, *parts) for parts in zip(*trees))
    return fn(*trees)


def take(stacked, index):
    """Row(s) `index` (an int, a slice or an index tensor) of every tensor in a nest of stacked tensors."""
    return map_tensors(lambda t: t[index], stacked)


def stack(nests: list):
    """One nest of stacked tensors from per-client nests of the same shape (the inverse of `unstack`)."""
    return map_tensors(lambda *ts: torch.stack(ts), *nests)


def unstack(stacked, count: int) -> list:
    """The `count` per-client nests of row views of a nest of stacked tensors."""
    if isinstance(stacked, dict):
        columns = {k: unstack(v, count) for k, v in stacked.items()}
        return [{k: column[i] for k, column in columns.items()} for i in range(count)]
    if isinstance(stacked, tuple):
        columns = [unstack(v, count) for v in stacked]
        return [tuple(column[i] for column in columns) for i in range(count)]
    return list(stacked.unbind(0))


class ChunkTrainer:
    """Trains chunks of clients with vmap; built once per run (or per Ray actor).

    Holds the model's three plain-backprop gradient functions (`clients.backprop`): autograd for
    ticks of a few clients, `functional_grad_fn` of the objective for vmapped ticks, and of
    `sample_mean(objective)` for padded ones; and all clients' data concatenated on the device.
    """

    def __init__(
        self,
        model: nn.Module,
        strategy: Strategy,
        client_data: list[tuple[torch.Tensor, torch.Tensor]],
        schedule: LocalSchedule,
        device: torch.device,
    ) -> None:
        self.strategy, self.schedule, self.device = strategy, schedule, device
        self.sizes = np.array([len(y) for _, y in client_data], dtype=np.int64)
        self.offsets = np.cumsum(self.sizes) - self.sizes
        self.x = torch.cat([x for x, _ in client_data]).to(device)
        self.y = torch.cat([y for _, y in client_data]).to(device)
        self.grad_fn = autograd_grad_fn(model, strategy.objective)
        self.vmap_grad_fn = functional_grad_fn(model, strategy.objective)
        with torch.no_grad():
            num_classes = model(self.x[:1]).shape[-1]
        self.tensor_summaries = True  # until a client_end needs Python ints (see `_client_end`)
        self.padded_grad_fn = None
        if is_sample_mean(strategy.objective, num_classes):
            self.padded_grad_fn = functional_grad_fn(
                model, sample_mean(strategy.objective, num_classes, device)
            )

    def train(
        self,
        *,
        client_ids: list[int],
        works: list[float],
        global_params: Params,
        broadcast: State,
        client_states: list[State],
        lr: float,
        seed: int,
        round_: int,
    ) -> ChunkResult:
        """Train `client_ids` (with their share of work and state) from the global params for one round."""
        sizes = self.sizes[client_ids]
        steps = np.array([self.schedule.num_steps(int(n), w) for n, w in zip(sizes, works)], dtype=np.int64)
        order = np.lexsort((-sizes, -steps))  # most steps first; equal (steps, samples) adjacent
        ids = [client_ids[i] for i in order]
        sizes, steps = sizes[order], steps[order]
        seeds = seeding.derive_seeds(seed, "shuffle", round_, last=ids)  # torch_generator's, for all at once
        rows, lengths = plan_batches(sizes, steps, self.offsets[ids], seeds, self.schedule.batch_size)
        rows = torch.from_numpy(rows).to(self.device)
        client_state = stack([client_states[i] for i in order])

        count = current = len(ids)
        still_training = (steps[:, None] > np.arange(rows.shape[1])).sum(0)
        params = {k: v.expand(count, *v.shape) for k, v in global_params.items()}
        velocity, carry = {}, {}
        loss_sum = torch.zeros(count, dtype=torch.float64, device=self.device)
        finished = None  # (params, carry) of the clients that have finished, filled as they finish
        for tick, active in enumerate(still_training.tolist()):
            if active < current:
                finished = self._set_aside(finished, (params, carry), active, current, count)
                params, velocity, carry = take((params, velocity, carry), slice(0, active))
                current = active
            params, velocity, carry, loss = self._tick(
                self._local_step(global_params, broadcast, lr, first=tick == 0),
                (params, velocity, carry, take(client_state, slice(0, active))),
                rows[:active, tick],
                lengths[:active, tick],
            )
            loss_sum[:active] += loss
        if finished is None:  # every client took the same number of steps
            finished = (params, carry)
        else:
            finished = self._set_aside(finished, (params, carry), 0, current, count)

        losses = (loss_sum.cpu().numpy() / steps).tolist()
        for position in np.argsort(order, kind="stable"):  # in the caller's order, as serial checks
            if not math.isfinite(losses[position]):
                raise TrainingDiverged(round_, ids[position], losses[position])
        uploads, new_states = self._client_end(
            *finished, client_state, steps, sizes, lr, global_params, broadcast
        )
        return ChunkResult(ids, uploads, new_states, sizes.tolist(), steps.tolist(), losses)

    def _local_step(self, global_params: Params, broadcast: State, lr: float, first: bool):
        """`step(grad_fn)`: one step of `train_client`'s loop for one client (the first calls `client_begin`)."""
        strategy, schedule = self.strategy, self.schedule

        def step(grad_fn: GradFn) -> Callable:
            def client_step(params, velocity, carry, client_state, x, y):
                ctx = LocalContext(global_params, broadcast, client_state, lr)
                if first:
                    carry = strategy.client_begin(ctx)
                loss, direction, carry = strategy.local_step(params, (x, y), grad_fn, carry, ctx)
                params, velocity = apply_step(params, direction, velocity or None, lr, schedule)
                return params, velocity or {}, carry, loss

            return client_step

        return step

    def _tick(self, step, state, rows: torch.Tensor, lengths: np.ndarray):
        """One local step of every client in `state` (params, velocity, carry, client state)."""
        if len(lengths) <= EAGER_MAX_CLIENTS:
            client_step = step(self.grad_fn)
            clients = unstack(state, len(lengths))
            return stack(
                [client_step(*clients[i], *self._gather(rows[i, :n])) for i, n in enumerate(lengths)]
            )
        longest = int(lengths.max())
        if int(lengths.min()) == longest:
            return vmap(step(self.vmap_grad_fn))(*state, *self._gather(rows[:, :longest]))
        if self.padded_grad_fn is not None:
            x, y = self._gather(rows[:, :longest])
            real = (
                torch.arange(longest, device=self.device) < torch.from_numpy(lengths).to(self.device)[:, None]
            )
            return vmap(step(self.padded_grad_fn))(*state, x, torch.where(real, y, PAD))
        out = None
        for length in np.unique(lengths):  # exact-size batches, one group per length
            group = np.flatnonzero(lengths == length)
            index = torch.from_numpy(group).to(self.device)
            part = self._tick(step, take(state, index), rows[index], lengths[group])
            if out is None:
                out = map_tensors(lambda t: t.new_empty((len(lengths), *t.shape[1:])), part)
            map_tensors(lambda o, p, index=index: o.index_copy_(0, index, p), out, part)
        return out

    def _gather(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of a [clients, batch] block of row numbers."""
        flat = rows.reshape(-1)
        x = self.x.index_select(0, flat).view(*rows.shape, *self.x.shape[1:])
        return x, self.y.index_select(0, flat).view(rows.shape)

    @staticmethod
    def _set_aside(finished, state, start: int, stop: int, count: int):
        """Copy rows [start, stop) of `state` into `finished`, allocated with `count` rows on first use."""
        if finished is None:
            finished = map_tensors(lambda t: t.new_empty((count, *t.shape[1:])), state)
        map_tensors(lambda f, t: f[start:stop].copy_(t[start:stop]), finished, state)
        return finished

    def _client_end(self, params, carry, client_state, steps, sizes, lr, global_params, broadcast):
        """Stacked (uploads, new client states) from every client's `client_end`.

        One vmapped call serves every `client_end` that computes with the summary's counts
        (per-client 0-d int64 tensors here). One that needs Python ints (a branch, `int()`,
        `range`) fails under vmap; from then on it is called per run of equal (steps, samples):
        one vmapped call for a run of at least `VMAP_MIN_CLIENTS` clients, one call per client
        for shorter runs (cheaper than a vmap call for a few clients).
        """

        def end(p, c, s, num_steps, num_samples):
            return self.strategy.client_end(
                p, c, LocalContext(global_params, broadcast, s, lr), LocalSummary(num_steps, num_samples, lr)
            )

        stacked = (params, carry, client_state)
        if self.tensor_summaries:
            counts = torch.from_numpy(np.stack([steps, sizes])).to(self.device)
            try:
                return vmap(end)(*stacked, counts[0], counts[1])
            except (RuntimeError, TypeError):
                self.tensor_summaries = False
        clients = unstack(stacked, len(steps))
        parts, singles, start = [], [], 0
        for (num_steps, num_samples), run in itertools.groupby(zip(steps.tolist(), sizes.tolist())):
            stop = start + len(list(run))
            end_run = partial(end, num_steps=num_steps, num_samples=num_samples)
            if stop - start >= VMAP_MIN_CLIENTS:
                if singles:
                    parts.append(stack(singles))
                    singles = []
                parts.append(vmap(end_run)(*take(stacked, slice(start, stop))))
            else:
                singles += [end_run(*clients[i]) for i in range(start, stop)]
            start = stop
        if singles:
            parts.append(stack(singles))
        return parts[0] if len(parts) == 1 else map_tensors(lambda *ts: torch.cat(ts), *parts)
