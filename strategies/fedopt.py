"""What FedAdagrad, FedAdam and FedYogi (Reddi et al., ICLR 2021) share: an adaptive server
optimiser (fedsim.server_opt.Adaptive) stepping along the round's mean client delta."""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.config import option
from fedsim.server_opt import ServerOptimised

VARIANTS = ("paper", "flwr")


@dataclass
class FedOpt(ServerOptimised):
    """Base of fedadagrad, fedadam and fedyogi; each subclass builds its `optimiser()`.

    `variant = "paper"` is Algorithm 2: the uniform mean delta over the cohort, no bias
    correction. `variant = "flwr"` is Flower 1.42's FedOpt family: the sample-weighted mean delta
    and, for FedAdam, its bias-corrected step size. `v_init` is v_{-1} in both: 0 by default, as
    in the authors' experiment code and Flower; Algorithm 2's analysis asks for v_{-1} >= tau^2.
    """

    eta: float = option(0.1, gt=0)
    beta_1: float = option(0.9, ge=0, lt=1)
    tau: float = option(1e-3, gt=0)
    v_init: float = option(0.0, ge=0)
    variant: str = option("paper", choices=VARIANTS)

    def upload_weights(self, num_samples: int) -> dict[str, float]:
        return {"delta": 1.0 if self.variant == "paper" else float(num_samples)}
