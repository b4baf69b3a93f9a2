"""The local schedule: which batches each client trains on in a round, computed once, as data.

Every executor consumes this one plan, so the serial loop, the vmapped chunks, the Ray workers
and the Flower clients draw the same batches by construction:

- a client with n samples takes `LocalSchedule.num_steps(n, work)` steps: E * ceil(n / B), or
  `train.local_steps`, times the share `work` of its steps it completes (system heterogeneity);
- its batch order is a fresh permutation per epoch from a torch generator seeded
  `batch_seeds(seed, "shuffle", round, [client])`; each epoch's last batch may be short. A
  trainer with another stream (unlabelled samples) draws it the same way under its own purpose.

`plan_batches` lays a whole cohort's batches out as row numbers into the concatenation of the
clients' data (padding slots repeat the client's first row); `client_batches` is one client's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fedsim import seeding


@dataclass(frozen=True)
class LocalSchedule:
    """How long a client trains in one round."""

    epochs: int
    steps: int  # > 0 overrides epochs
    batch_size: int

    def num_steps(self, num_samples: int, work: float = 1.0) -> int:
        """Local steps of a client with `num_samples` samples: E * ceil(n / B), or `steps`,
        scaled by the share of its work the client completes (at least one step)."""
        full = self.steps if self.steps > 0 else self.epochs * math.ceil(num_samples / self.batch_size)
        return max(1, math.ceil(work * full - 1e-9))


def batch_seeds(seed: int, purpose: str, round_: int, client_ids) -> np.ndarray:
    """The seed of each client's batch order in round `round_` ("shuffle": its labelled data)."""
    return seeding.derive_seeds(seed, purpose, round_, last=np.asarray(client_ids, dtype=np.int64))


def plan_batches(
    sizes: np.ndarray,
    steps: np.ndarray,
    offsets: np.ndarray,
    seeds: np.ndarray,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Every client's batches of one round as rows of the concatenated data.

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


def cohort_batches(
    schedule: LocalSchedule, seed: int, round_: int, client_ids: list[int], sizes: list[int], works: list[float]
) -> list[list[torch.Tensor]]:
    """Each client's batches of a round (index tensors into its own data), planned in one call."""
    steps = np.array([schedule.num_steps(n, w) for n, w in zip(sizes, works)], dtype=np.int64)
    rows, lengths = plan_batches(
        np.asarray(sizes, dtype=np.int64), steps, np.zeros(len(sizes), dtype=np.int64),
        batch_seeds(seed, "shuffle", round_, client_ids), schedule.batch_size,
    )
    rows = torch.from_numpy(rows)
    return [[rows[i, t, :n] for t, n in enumerate(lengths[i, : steps[i]].tolist())] for i in range(len(sizes))]


def client_batches(num_samples: int, num_steps: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """One client's `num_steps` batches, as index tensors into its own data, from batch seed `seed`."""
    rows, lengths = plan_batches(
        np.array([num_samples]), np.array([num_steps]), np.zeros(1, dtype=np.int64), [seed], batch_size
    )
    return [torch.from_numpy(rows[0, t, :n]) for t, n in enumerate(lengths[0].tolist())]
