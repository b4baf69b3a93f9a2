"""Byzantine clients: a seeded share of the federation that attacks, to measure how an
aggregation rule holds up (`[attack]`, fedsim.config.AttackConfig).

The attackers are `floor(attack.fraction * N)` clients drawn once per run from the seed; they
take part when sampled, like every client. What an attacker does:

- `sign_flip`: it sends its update reversed, -delta (Li et al., AAAI 2019, "RSA");
- `gaussian`: it sends noise N(0, std^2) in place of its update (Blanchard et al., NeurIPS 2017);
- `scaled`: it sends `scale` x delta, the boosted update of model replacement (Bagdasaryan et
  al., AISTATS 2020);
- `label_flip`: it trains honestly on poisoned labels, y -> C - 1 - y (Tolpegin et al., ESORICS
  2020); its local test data keeps the true labels.

Upload attacks change the `delta` field, the model update every built-in strategy sends, after
the strategy's `client_end` and before any reduction: every executor hands each client's upload
to `Attack.corrupt` (one client) or `corrupt_stacked` (a vmapped chunk), so serial, vectorized,
ray and flower send the server the same corrupted uploads. Gaussian noise is drawn on the CPU
from (seed, round, client), whatever the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedsim import seeding
from fedsim.config import AttackConfig
from fedsim.strategy import State
from fedsim.tree import Params

UPLOAD_ATTACKS = ("sign_flip", "gaussian", "scaled")


def choose_attackers(config: AttackConfig, num_clients: int, seed: int) -> frozenset[int]:
    """The run's Byzantine clients: floor(fraction * N) of them, drawn from the seed (none without an attack)."""
    count = math.floor(config.fraction * num_clients + 1e-9) if config.name != "none" else 0
    chosen = seeding.numpy_rng(seed, "attackers").choice(num_clients, size=count, replace=False)
    return frozenset(int(c) for c in chosen)


def flip_labels(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label flipping: class c becomes C - 1 - c."""
    return num_classes - 1 - y


@dataclass(frozen=True)
class Attack:
    """An upload attack by the `attackers`, as `[attack]` configures it."""

    config: AttackConfig
    attackers: frozenset[int]
    seed: int

    def corrupt(self, round_: int, client_id: int, upload: State) -> State:
        """The upload client `client_id` sends in round `round_` (its own, unless it attacks)."""
        if client_id not in self.attackers:
            return upload
        return {**upload, "delta": self._corrupted(round_, client_id, upload["delta"])}

    def corrupt_stacked(self, round_: int, client_ids: list[int], uploads: State) -> State:
        """`corrupt` for a chunk's stacked uploads (row i: client `client_ids[i]`)."""
        rows = [i for i, cid in enumerate(client_ids) if cid in self.attackers]
        if not rows:
            return uploads
        delta = uploads["delta"]
        index = torch.tensor(rows, device=next(iter(delta.values())).device)
        bad = [self._corrupted(round_, client_ids[i], {k: v[i] for k, v in delta.items()}) for i in rows]
        corrupted = {k: v.index_copy(0, index, torch.stack([b[k] for b in bad])) for k, v in delta.items()}
        return {**uploads, "delta": corrupted}

    def _corrupted(self, round_: int, client_id: int, delta: Params) -> Params:
        name = self.config.name
        if name == "sign_flip":
            return {k: -v for k, v in delta.items()}
        if name == "scaled":
            return {k: self.config.scale * v for k, v in delta.items()}
        generator = seeding.torch_generator(self.seed, "attack", round_, client_id)
        noise = {
            k: (self.config.std * torch.randn(delta[k].shape, generator=generator, dtype=torch.float64)).to(delta[k])
            for k in sorted(delta)  # drawn in name order, whatever order the upload lists them in
        }
        return {k: noise[k] for k in delta}


def upload_attack(config: AttackConfig, attackers: frozenset[int], seed: int) -> Attack | None:
    """The run's upload attack, or None when no client's upload is corrupted."""
    if config.name not in UPLOAD_ATTACKS or not attackers:
        return None
    return Attack(config, attackers, seed)
