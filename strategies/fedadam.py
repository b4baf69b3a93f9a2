"""FedAdam (Reddi et al., ICLR 2021): Adam on the server along the mean client delta."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedsim.config import option
from fedsim.server_opt import Adaptive
from strategies.fedopt import FedOpt


@dataclass
class FedAdam(FedOpt):
    """FedAdam: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, x -= eta m / (sqrt(v) + tau).

    g is the mean client delta. Defaults eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3 (Flower
    1.42's flwr.serverapp FedAdam; the paper's beta_1, beta_2 and tau). `variant` as in FedOpt:
    "flwr" adds Flower's bias-corrected step eta sqrt(1 - b2^(r+1)) / (1 - b1^(r+1)).
    """

    name: ClassVar[str] = "fedadam"

    beta_2: float = option(0.99, ge=0, lt=1)

    def optimiser(self) -> Adaptive:
        return Adaptive("adam", self.eta, self.beta_1, self.beta_2, self.tau, self.v_init,
                        bias_correction=self.variant == "flwr")
