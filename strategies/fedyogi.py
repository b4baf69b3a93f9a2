"""FedYogi (Reddi et al., ICLR 2021): Yogi on the server along the mean client delta."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedsim.config import option
from fedsim.server_opt import Adaptive
from strategies.fedopt import FedOpt


@dataclass
class FedYogi(FedOpt):
    """FedYogi: as FedAdam but v = v - (1 - b2) g^2 sign(v - g^2), an additive step of v toward g^2.

    Defaults eta=0.01, beta_1=0.9, beta_2=0.99, tau=1e-3 (Flower 1.42's FedYogi; the paper's
    beta_1, beta_2 and tau). No bias correction in either `variant` (FedOpt).
    """

    name: ClassVar[str] = "fedyogi"

    eta: float = option(0.01, gt=0)
    beta_2: float = option(0.99, ge=0, lt=1)

    def optimiser(self) -> Adaptive:
        return Adaptive("yogi", self.eta, self.beta_1, self.beta_2, self.tau, self.v_init)
