"""FedAvg (McMahan et al. 2017): average the clients' models, weighted by sample count."""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.config import option
from fedsim.strategy import Strategy

WEIGHTINGS = ("samples", "uniform")


@dataclass
class FedAvg(Strategy):
    """FedAvg: weighted average of client models (weighting = "samples" or "uniform")."""

    weighting: str = option("samples", choices=WEIGHTINGS)

    def upload_weights(self, num_samples: int) -> dict[str, float]:
        return {"delta": float(num_samples) if self.weighting == "samples" else 1.0}
