"""FedMedian (Yin et al., ICML 2018): the coordinate-wise median of the client models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedsim.strategy import Aggregate, RoundInfo, State, Strategy
from fedsim.tree import Params


def coordinate_median(stacked: torch.Tensor) -> torch.Tensor:
    """The median over dim 0; an even count gives the mean of the two middle values (numpy's and
    Flower's median; `torch.median` would give the lower one)."""
    ordered = stacked.sort(dim=0).values
    n = len(ordered)
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


@dataclass
class FedMedian(Strategy):
    """FedMedian: x <- coordinate-wise median of the client models, unweighted (flwr FedMedian).

    The median of y_i = x - delta_i is x - the median of delta_i, so the server takes the median
    of the deltas. Sample counts are ignored, as in Flower.
    """

    name: ClassVar[str] = "fedmedian"
    needs_all_uploads: ClassVar[bool] = True

    def server_update(
        self, params: Params, server_state: State, aggregate: Aggregate, info: RoundInfo
    ) -> tuple[Params, State]:
        deltas = aggregate.stacked()
        return {k: params[k] - coordinate_median(deltas[k]) for k in params}, server_state
