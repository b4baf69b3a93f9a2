"""The vmapped executor: local training of a whole chunk of clients at once with `torch.func.vmap`.

`ChunkExecutor.train` gives every client of a chunk the local round `fedsim.local.local_loop`
gives it: the same scheduled batches (`fedsim.schedule.plan_batches`), the trainer's `begin` /
`step` / `end` and the strategy's `client_begin` / `local_step` / `client_end`, and the NaN
check. Only the order of work differs: each local step is taken by all clients of the chunk in
one vmapped call. It runs trainers with `vectorizes = True`.

- **Ticks.** At tick t every client that still trains takes its t-th step. Clients are sorted
  by step count, longest first, so those still training are a prefix of the stacked state; a
  finished client's state is set aside and stops changing. A tick of at most
  `EAGER_MAX_CLIENTS` clients runs them one by one (autograd), cheaper than a vmapped call.
- **Batches.** A chunk's clients are materialised once per round, their data concatenated on
  the device (`Population.gather`), and the round's batches are planned up front as row numbers
  into it, so a tick gathers its inputs with one indexing op and no per-client Python.
- **Short batches.** A tick whose batches all have one length runs the objective unchanged.
  When lengths differ (a short last batch of an epoch, clients smaller than the batch size):
  an objective that is a mean over samples (cross-entropy; `is_sample_mean` probes it once)
  runs on batches padded to the longest, rescaled so that it equals the objective of the real
  rows (`sample_mean`). Any other objective (FedLD's batch-level margin), and any model with
  BatchNorm (whose batch statistics padding rows would change), runs once per batch length, on
  exact-size batches of the clients whose batch has that length: exact for every objective,
  slower when many lengths meet at one tick.
- **Client end.** One vmapped `client_end` + trainer `end` for the chunk, its `LocalSummary`
  counts being per-client tensors; one that needs Python ints runs per group of equal counts.

Limits: in a padded tick a strategy's `local_step` sees the padded batch (targets `PAD` on the
padded rows), so it must hand the batch to `grad_fn` rather than compute with it; targets are
class indices; the model must not update buffers in place (a federation's BatchNorm layers keep
no running statistics: `fedsim.normalisation`) or draw random numbers (dropout). Results equal serial's up to float rounding: vmapped kernels
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

from fedsim import tree
from fedsim.attacks import Attack
from fedsim.backends.base import ClientReport
from fedsim.backends.collect import RoundCollector
from fedsim.errors import TrainingDiverged, plugin_code
from fedsim.gradients import Objective
from fedsim.normalisation import batch_norms
from fedsim.population import Population
from fedsim.schedule import LocalSchedule, batch_seeds, plan_batches
from fedsim.strategy import GradFn, LocalContext, LocalSummary, State, Strategy
from fedsim.trainer import ClientTrainer, join_state, split_state
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
    """`objective` over the targets that are not `PAD`, for an objective that is a mean over samples
    (over target positions, for targets with a class per position).

    Padded targets get constant logits (`PAD_LOGIT` on class 0) and target 0, so they add a
    constant without gradient to the batch mean; rescaling by positions / real positions and
    removing that constant gives the objective of the real rows alone, with one objective call on
    the padded batch.
    """
    pad_logits = torch.zeros(num_classes, device=device)
    pad_logits[0] = PAD_LOGIT
    pad_value = float(objective(pad_logits[None], torch.zeros(1, dtype=torch.long, device=device)))

    def padded_objective(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        real = targets != PAD
        rows, num_real = targets.numel(), real.sum()
        mean = objective(
            torch.where(real[..., None], logits, pad_logits.to(logits)), torch.where(real, targets, 0)
        )
        return (rows * mean - (rows - num_real) * pad_value) / num_real

    return padded_objective


@dataclass
class ChunkResult:
    """A trained chunk, in the executor's order (`client_ids`); uploads and states are stacked."""

    client_ids: list[int]
    uploads: State
    strategy_states: State
    trainer_states: State
    num_samples: list[int]
    num_steps: list[int]
    losses: list[float]  # mean local loss over each client's steps


class ChunkExecutor:
    """Trains chunks of clients with vmap; built once per run (or per Ray actor).

    Holds the trainer's three gradient functions of the model: autograd for ticks of a few
    clients, the functional one of the objective for vmapped ticks, and of
    `sample_mean(objective)` for padded ones. `probe` is a training batch to size the model's output with.
    """

    def __init__(
        self,
        model: nn.Module,
        strategy: Strategy,
        trainer: ClientTrainer,
        clients: Population,
        schedule: LocalSchedule,
        device: torch.device,
        seed: int,
        probe: torch.Tensor,
        attack: Attack | None = None,
    ) -> None:
        self.strategy, self.trainer, self.schedule, self.device = strategy, trainer, schedule, device
        self.clients, self.seed, self.attack = clients, seed, attack
        objective = strategy.objective
        self.grad_fn = trainer.grad_fn(model, objective)
        self.vmap_grad_fn = trainer.grad_fn(model, objective, functional=True)
        with torch.no_grad():
            num_classes = model(probe[:1]).shape[-1]
        self.tensor_summaries = True  # until a client_end needs Python ints (see `_client_end`)
        self.padded_grad_fn = None  # BatchNorm couples a batch's samples: padding rows would change it
        if is_sample_mean(objective, num_classes) and not batch_norms(model):
            self.padded_grad_fn = trainer.grad_fn(model, sample_mean(objective, num_classes, device), functional=True)

    def train(
        self,
        *,
        client_ids: list[int],
        works: list[float],
        global_params: Params,
        broadcast: State,
        strategy_states: list[State],
        trainer_states: list[State],
        lr: float,
        round_: int,
    ) -> ChunkResult:
        """Train `client_ids` (with their share of work and states) from the global params for one round."""
        sizes = self.clients.sizes[client_ids]
        steps = np.array([self.schedule.num_steps(int(n), w) for n, w in zip(sizes, works)], dtype=np.int64)
        order = np.lexsort((-sizes, -steps))  # most steps first; equal (steps, samples) adjacent
        ids = [client_ids[i] for i in order]
        sizes, steps = sizes[order], steps[order]
        data = self.clients.gather(ids, self.device)
        seeds = batch_seeds(self.seed, "shuffle", round_, ids)
        rows, lengths = plan_batches(sizes, steps, np.cumsum(sizes) - sizes, seeds, self.schedule.batch_size)
        rows = torch.from_numpy(rows).to(self.device)
        # per client, what its steps read and never change: its states and its step count
        fixed = (
            tree.stack([strategy_states[i] for i in order]),
            tree.stack([trainer_states[i] for i in order]),
            torch.from_numpy(steps).to(self.device),
        )

        count = current = len(ids)
        still_training = (steps[:, None] > np.arange(rows.shape[1])).sum(0)
        params = {k: v.expand(count, *v.shape) for k, v in global_params.items()}
        opt, carry = {}, {}
        loss_sum = torch.zeros(count, dtype=torch.float64, device=self.device)
        finished = None  # (params, opt, carry) of the clients that have finished, filled as they finish
        for tick, active in enumerate(still_training.tolist()):
            if active < current:
                finished = self._set_aside(finished, (params, opt, carry), active, current, count)
                params, opt, carry = tree.take((params, opt, carry), slice(0, active))
                current = active
            params, opt, carry, loss = self._tick(
                self._local_step(global_params, broadcast, lr, first=tick == 0),
                (params, opt, carry, *tree.take(fixed, slice(0, active))),
                data,
                rows[:active, tick],
                lengths[:active, tick],
            )
            loss_sum[:active] += loss
        if finished is None:  # every client took the same number of steps
            finished = (params, opt, carry)
        else:
            finished = self._set_aside(finished, (params, opt, carry), 0, current, count)

        losses = (loss_sum.cpu().numpy() / steps).tolist()
        for position in np.argsort(order, kind="stable"):  # in the caller's order, as serial checks
            if not math.isfinite(losses[position]):
                raise TrainingDiverged(round_, ids[position], losses[position])
        uploads, strategy_out, trainer_out = self._client_end(
            *finished, *fixed[:2], steps, sizes, lr, global_params, broadcast
        )
        return ChunkResult(ids, uploads, strategy_out, trainer_out, sizes.tolist(), steps.tolist(), losses)

    def run(self, plan, client_ids: list[int], chunk_size: int, memory_meter):
        """Train `client_ids` in chunks of `chunk_size` and reduce their updates (a `RoundOutput`
        in the order of `client_ids`); `memory_meter()` meters each chunk (its peak is reported
        for each of its clients)."""
        device = self.device
        global_params = tree.to(plan.global_params, device)
        broadcast = {g: tree.to(p, device) for g, p in plan.broadcast.items()}
        collector = RoundCollector(self.strategy)
        for start in range(0, len(client_ids), chunk_size):
            chunk = client_ids[start : start + chunk_size]
            states = [split_state({g: tree.to(p, device) for g, p in plan.client_states[c].items()}) for c in chunk]
            with memory_meter() as memory, plugin_code(plan.round, chunk):
                result = self.train(
                    client_ids=chunk,
                    works=[plan.work[cid] for cid in chunk],
                    global_params=global_params,
                    broadcast=broadcast,
                    strategy_states=[s for s, _ in states],
                    trainer_states=[t for _, t in states],
                    lr=plan.lr,
                    round_=plan.round,
                )
            if self.attack:
                result.uploads = self.attack.corrupt_stacked(plan.round, result.client_ids, result.uploads)
            collector.add_stacked(result.uploads, result.num_samples)
            count = len(result.client_ids)
            strategy_states = tree.unstack(result.strategy_states, count)
            trainer_states = tree.unstack(result.trainer_states, count)
            uploads = tree.unstack(result.uploads, count) if self.strategy.needs_all_uploads else [None] * count
            for i, cid in enumerate(result.client_ids):
                # cloned, so a stored state does not keep the whole chunk's tensor alive
                state = tree.map_tensors(torch.clone, join_state(strategy_states[i], trainer_states[i]))
                collector.keep(cid, uploads[i], state)
                collector.report(
                    ClientReport(
                        cid, result.num_samples[i], result.num_steps[i], result.losses[i],
                        peak_cuda_bytes=memory.cuda_bytes,
                    )
                )
        return collector.output(client_ids)

    def _local_step(self, global_params: Params, broadcast: State, lr: float, first: bool):
        """`step(grad_fn)`: one step of `local_loop` for one client (the first also begins the round)."""
        strategy, trainer = self.strategy, self.trainer

        def step(grad_fn: GradFn) -> Callable:
            def client_step(params, opt, carry, strategy_state, trainer_state, num_steps, x, y):
                ctx = LocalContext(global_params, broadcast, strategy_state, lr, num_steps)
                if first:
                    params = trainer.start_params(params, trainer_state)
                    opt = trainer.begin(global_params, trainer_state, ctx)
                    carry = strategy.client_begin(ctx)
                loss, params, opt, carry = trainer.step(params, opt, carry, (x, y), grad_fn, strategy, ctx)
                return params, opt, carry, loss

            return client_step

        return step

    def _tick(self, step, state, data, rows: torch.Tensor, lengths: np.ndarray):
        """One local step of every client in `state` (params, opt, carry, strategy state, trainer
        state, step count), its batches `rows` of the chunk's `data`."""
        if len(lengths) <= EAGER_MAX_CLIENTS:
            client_step = step(self.grad_fn)
            clients = tree.unstack(state, len(lengths))
            return tree.stack(
                [client_step(*clients[i], *_gather(data, rows[i, :n])) for i, n in enumerate(lengths)]
            )
        longest = int(lengths.max())
        if int(lengths.min()) == longest:
            return vmap(step(self.vmap_grad_fn))(*state, *_gather(data, rows[:, :longest]))
        if self.padded_grad_fn is not None:
            x, y = _gather(data, rows[:, :longest])
            real = (
                torch.arange(longest, device=self.device) < torch.from_numpy(lengths).to(self.device)[:, None]
            )
            real = real.view(*real.shape, *[1] * (y.ndim - real.ndim))  # a padded row pads each of its positions
            return vmap(step(self.padded_grad_fn))(*state, x, torch.where(real, y, PAD))
        out = None
        for length in np.unique(lengths):  # exact-size batches, one group per length
            group = np.flatnonzero(lengths == length)
            index = torch.from_numpy(group).to(self.device)
            part = self._tick(step, tree.take(state, index), data, rows[index], lengths[group])
            if out is None:
                out = tree.map_tensors(lambda t: t.new_empty((len(lengths), *t.shape[1:])), part)
            tree.map_tensors(lambda o, p, index=index: o.index_copy_(0, index, p), out, part)
        return out


    @staticmethod
    def _set_aside(finished, state, start: int, stop: int, count: int):
        """Copy rows [start, stop) of `state` into `finished`, allocated with `count` rows on first use."""
        if finished is None:
            finished = tree.map_tensors(lambda t: t.new_empty((count, *t.shape[1:])), state)
        tree.map_tensors(lambda f, t: f[start:stop].copy_(t[start:stop]), finished, state)
        return finished

    def _client_end(
        self, params, opt, carry, strategy_state, trainer_state, steps, sizes, lr, global_params, broadcast
    ):
        """Stacked (uploads, new strategy states, new trainer states) of every client's round end.

        One vmapped call serves every `client_end` (and trainer `end`) that computes with the
        summary's counts (per-client 0-d int64 tensors here). One that needs Python ints (a
        branch, `int()`, `range`) fails under vmap; from then on it is called per run of equal
        (steps, samples): one vmapped call for a run of at least `VMAP_MIN_CLIENTS` clients, one
        call per client for shorter runs (cheaper than a vmap call for a few clients).
        """
        strategy, trainer = self.strategy, self.trainer

        def end(p, o, c, s, t, num_steps, num_samples):
            summary = LocalSummary(num_steps, num_samples, lr, trainer.sgd.momentum)
            shared = trainer.shared_params(p, global_params)
            ctx = LocalContext(global_params, broadcast, s, lr, num_steps)
            upload, s_new = strategy.client_end(shared, c, ctx, summary)
            return upload, s_new, trainer.end(p, o, t, summary)

        stacked = (params, opt, carry, strategy_state, trainer_state)
        if self.tensor_summaries:
            counts = torch.from_numpy(np.stack([steps, sizes])).to(self.device)
            try:
                return vmap(end)(*stacked, counts[0], counts[1])
            except (RuntimeError, TypeError):
                self.tensor_summaries = False
        clients = tree.unstack(stacked, len(steps))
        parts, singles, start = [], [], 0
        for (num_steps, num_samples), run in itertools.groupby(zip(steps.tolist(), sizes.tolist())):
            stop = start + len(list(run))
            end_run = partial(end, num_steps=num_steps, num_samples=num_samples)
            if stop - start >= VMAP_MIN_CLIENTS:
                if singles:
                    parts.append(tree.stack(singles))
                    singles = []
                parts.append(vmap(end_run)(*tree.take(stacked, slice(start, stop))))
            else:
                singles += [end_run(*clients[i]) for i in range(start, stop)]
            start = stop
        if singles:
            parts.append(tree.stack(singles))
        return parts[0] if len(parts) == 1 else tree.map_tensors(lambda *ts: torch.cat(ts), *parts)


def _gather(data: tuple[torch.Tensor, torch.Tensor], rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of a [clients, batch] block of row numbers into `data`."""
    x, y = data
    flat = rows.reshape(-1)
    return x.index_select(0, flat).view(*rows.shape, *x.shape[1:]), y.index_select(0, flat).view(*rows.shape, *y.shape[1:])
