"""Krum and Multi-Krum (Blanchard et al., NeurIPS 2017): keep the uploads closest to their neighbours."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedsim.config import option
from fedsim.errors import ConfigError
from fedsim.strategy import Aggregate, RoundInfo, State, Strategy
from fedsim.tree import Params
from strategies.fedavg import WEIGHTINGS


def flatten(stacked: Params) -> torch.Tensor:
    """One row per upload: every parameter of it, flattened and concatenated."""
    return torch.cat([v.reshape(len(v), -1) for v in stacked.values()], dim=1)


def krum_scores(rows: torch.Tensor, num_malicious: int) -> torch.Tensor:
    """score(i) = sum of squared distances from row i to its n - f - 2 nearest other rows.

    At least one neighbour counts (Flower's rule; it matters only when Bulyan's repeated Krum has
    few uploads left, since Krum itself needs n > 2f + 2).
    """
    neighbours = max(len(rows) - num_malicious - 2, 1)
    distances = torch.stack([((rows - row) ** 2).sum(dim=1) for row in rows])
    distances.fill_diagonal_(torch.inf)  # a row is not its own neighbour
    return distances.sort(dim=1).values[:, :neighbours].sum(dim=1)


TOO_FEW = "raise train.fraction or data.num_clients, or lower strategy.num_malicious"


@dataclass
class Krum(Strategy):
    """Krum / Multi-Krum: x <- the mean of the num_selected uploads with the lowest Krum scores.

    f = `num_malicious` (Flower's default 0) is the assumed number of Byzantine uploads; a round
    needs n > 2f + 2 of them. `num_selected` = m = 1 is Krum (x moves to the one chosen client
    model), m > 1 Multi-Krum; the m chosen deltas are averaged weighted by sample count
    (`weighting = "samples"`, as Flower) or uniformly (`"uniform"`, Blanchard et al.'s average).
    """

    name: ClassVar[str] = "krum"
    needs_all_uploads: ClassVar[bool] = True

    num_malicious: int = option(0, ge=0)
    num_selected: int = option(1, ge=1)
    weighting: str = option("samples", choices=WEIGHTINGS)

    def validate_uploads(self, uploads: int) -> None:
        f = self.num_malicious
        if uploads <= 2 * f + 2:
            raise ConfigError(f"krum needs more than 2 * strategy.num_malicious + 2 = {2 * f + 2} uploads "
                              f"a round, got {uploads}: {TOO_FEW}")
        if self.num_selected > uploads:
            raise ConfigError(f"krum keeps strategy.num_selected = {self.num_selected} uploads but a round "
                              f"has {uploads}: lower strategy.num_selected")

    def server_update(
        self, params: Params, server_state: State, aggregate: Aggregate, info: RoundInfo
    ) -> tuple[Params, State]:
        n, f = len(aggregate.uploads), self.num_malicious
        deltas = aggregate.stacked()
        chosen = krum_scores(flatten(deltas), f).argsort(stable=True)[: self.num_selected]
        counts = aggregate.num_samples if self.weighting == "samples" else [1] * n
        weights = torch.tensor(counts, dtype=torch.float64, device=chosen.device)[chosen]
        mean = {k: (torch.tensordot(weights, v[chosen].double(), dims=1) / weights.sum()).to(v.dtype)
                for k, v in deltas.items()}
        return {k: params[k] - mean[k] for k in params}, server_state
