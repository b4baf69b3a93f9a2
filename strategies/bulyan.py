"""Bulyan (El Mhamdi et al., ICML 2018): Krum-select uploads, then a trimmed mean around their median."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedsim.config import option
from fedsim.errors import ConfigError
from fedsim.strategy import Aggregate, RoundInfo, State, Strategy
from fedsim.tree import Params
from strategies.fedmedian import coordinate_median
from strategies.krum import TOO_FEW, flatten, krum_scores

SELECTIONS = ("krum", "multikrum")


def repeated_krum(rows: torch.Tensor, num_malicious: int, count: int) -> list[int]:
    """Indices of `count` rows chosen by Krum one at a time, each removed before the next choice."""
    remaining = list(range(len(rows)))
    chosen = []
    for _ in range(count):
        best = remaining[int(krum_scores(rows[remaining], num_malicious).argmin())]
        chosen.append(best)
        remaining.remove(best)
    return chosen


def mean_around_median(stacked: torch.Tensor, count: int) -> torch.Tensor:
    """Per coordinate, the mean of the `count` values (over dim 0) closest to their median."""
    closest = (stacked - coordinate_median(stacked)).abs().argsort(dim=0, stable=True)[:count]
    return stacked.gather(0, closest).mean(dim=0)


@dataclass
class Bulyan(Strategy):
    """Bulyan: Krum-select theta = n - 2f uploads, average per coordinate the theta - 2f nearest their median.

    A round needs n >= 4f + 3 uploads, f = `num_malicious` (Flower's default 0, which makes
    Bulyan the plain unweighted mean). `selection = "krum"` (default) is the paper's: Krum applied
    theta times, each choice removed before the next (flwr.server.strategy.Bulyan). `"multikrum"`
    keeps the theta lowest Krum scores of one pass (flwr.serverapp.strategy.Bulyan). Sample counts
    are ignored, as in Flower.
    """

    name: ClassVar[str] = "bulyan"
    needs_all_uploads: ClassVar[bool] = True

    num_malicious: int = option(0, ge=0)
    selection: str = option("krum", choices=SELECTIONS)

    def validate_uploads(self, uploads: int) -> None:
        f = self.num_malicious
        if uploads < 4 * f + 3:
            raise ConfigError(f"bulyan needs at least 4 * strategy.num_malicious + 3 = {4 * f + 3} uploads "
                              f"a round, got {uploads}: {TOO_FEW}")

    def server_update(
        self, params: Params, server_state: State, aggregate: Aggregate, info: RoundInfo
    ) -> tuple[Params, State]:
        n, f = len(aggregate.uploads), self.num_malicious
        theta = n - 2 * f
        deltas = aggregate.stacked()
        rows = flatten(deltas)
        if self.selection == "krum":
            chosen = repeated_krum(rows, f, theta)
        else:
            chosen = krum_scores(rows, f).argsort(stable=True)[:theta].tolist()
        kept = theta - 2 * f
        return {k: params[k] - mean_around_median(deltas[k][chosen], kept) for k in params}, server_state
