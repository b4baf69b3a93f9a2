"""FedAdagrad (Reddi et al., ICLR 2021): Adagrad on the server along the mean client delta."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedsim.config import option
from fedsim.server_opt import Adaptive
from strategies.fedopt import FedOpt


@dataclass
class FedAdagrad(FedOpt):
    """FedAdagrad: v = v + g^2, x -= eta m / (sqrt(v) + tau), m = b1 m + (1 - b1) g.

    Defaults eta=0.1, tau=1e-3 and beta_1=0: no momentum, as Flower 1.42 fixes it and as the
    authors' experiments ran it (Keras Adagrad); Algorithm 2 allows any beta_1 in [0, 1).
    No bias correction in either `variant` (FedOpt).
    """

    name: ClassVar[str] = "fedadagrad"

    beta_1: float = option(0.0, ge=0, lt=1)

    def optimiser(self) -> Adaptive:
        return Adaptive("adagrad", self.eta, self.beta_1, 0.0, self.tau, self.v_init)
