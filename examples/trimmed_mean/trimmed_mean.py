"""A third-party fedsim strategy: the coordinate-wise trimmed mean (Yin et al. 2018)."""

from dataclasses import dataclass

import torch

from fedsim.errors import ConfigError
from fedsim.strategy import Strategy


@dataclass
class TrimmedMean(Strategy):
    """Trimmed mean: per coordinate, drop the `trim` share of largest and smallest client deltas."""

    name = "trimmed_mean"
    needs_all_uploads = True  # the server sorts every client's upload, so no weighted sum

    trim: float = 0.1

    def validate(self):
        if not 0 <= self.trim < 0.5:
            raise ConfigError(f"strategy.trim must be in [0, 0.5), got {self.trim}")

    def server_update(self, params, server_state, aggregate, info):
        m = len(aggregate.uploads)
        cut = int(self.trim * m)
        new_params = {}
        for name, value in params.items():
            deltas = torch.stack([upload["delta"][name] for upload in aggregate.uploads])
            kept = deltas.sort(dim=0).values[cut : m - cut]
            new_params[name] = value - kept.mean(dim=0)
        return new_params, server_state
