"""FedTrimmedAvg (Yin et al., ICML 2018): the coordinate-wise trimmed mean of the client models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedsim.config import option
from fedsim.strategy import Aggregate, RoundInfo, State, Strategy
from fedsim.tree import Params


def trimmed_mean(stacked: torch.Tensor, beta: float) -> torch.Tensor:
    """The mean over dim 0 after dropping, per coordinate, the int(beta * n) smallest and largest values."""
    n = len(stacked)
    cut = int(beta * n)
    return stacked.sort(dim=0).values[cut : n - cut].mean(dim=0)


@dataclass
class FedTrimmedAvg(Strategy):
    """FedTrimmedAvg: per coordinate, drop the beta share of largest and of smallest client values.

    `beta` is the share cut from each end, in [0, 0.5): int(beta * n) of the n uploads, so at least
    one value always remains (Flower's FedTrimmedAvg, default 0.2; beta = 0 is the unweighted
    mean). Sample counts are ignored, as in Flower.
    """

    name: ClassVar[str] = "fedtrimmedavg"
    needs_all_uploads: ClassVar[bool] = True

    beta: float = option(0.2, ge=0, lt=0.5)

    def server_update(
        self, params: Params, server_state: State, aggregate: Aggregate, info: RoundInfo
    ) -> tuple[Params, State]:
        deltas = aggregate.stacked()
        return {k: params[k] - trimmed_mean(deltas[k], self.beta) for k in params}, server_state
