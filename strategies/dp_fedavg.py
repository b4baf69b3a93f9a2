"""DP-FedAvg (McMahan et al., ICLR 2018): user-level differential privacy for FedAvg.

Each client clips its update to norm S; the server averages the clipped updates uniformly and
adds Gaussian noise of std z S to their sum, so one client's whole data changes a round's
output by at most S before noise. The privacy spent after r rounds, epsilon at the configured
delta, comes from Opacus's RDP accountant for the sampled Gaussian mechanism with sampling
rate q = m / N and noise multiplier z, and is written to metrics.csv every round.

The accountant assumes Poisson sampling of clients; fedsim samples a fixed-size cohort without
replacement (as Flower's DP strategies do), for which the RDP bound is the standard
approximation, not a proof. `train.dropout` lowers m, and q with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import torch

from fedsim import seeding, tree
from fedsim.config import option
from fedsim.strategy import Aggregate, LocalContext, LocalSummary, RoundInfo, State, Strategy
from fedsim.tree import Params


def clipped(delta: Params, clip_norm: float) -> Params:
    """`delta` scaled to norm at most `clip_norm` (its flat L2 norm over every parameter)."""
    factor = torch.clamp(clip_norm / (tree.norm(delta) + 1e-12), max=1.0)
    return tree.scale(delta, factor)


@lru_cache(maxsize=None)
def epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """(epsilon, delta)-DP spent by `rounds` sampled Gaussian mechanisms (Opacus's RDP accountant)."""
    from opacus.accountants import RDPAccountant  # imported by DP runs only: about 3 s

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, rounds)]
    return float(accountant.get_epsilon(delta))


@dataclass
class DPFedAvg(Strategy):
    """DP-FedAvg: x <- x - (sum_i clip_S(delta_i) + N(0, (z S)^2 I)) / m, m the round's uploads.

    `clip_norm` S (default 1.0) bounds each client's update; `noise_multiplier` z (default 1.0)
    sets the noise; `delta` (default 1e-5) is the delta of the reported epsilon. The noise is
    drawn on the CPU from (seed, round), the same on every backend.
    """

    name: ClassVar[str] = "dp_fedavg"
    metric_columns: ClassVar[tuple[str, ...]] = ("epsilon",)

    clip_norm: float = option(1.0, gt=0)
    noise_multiplier: float = option(1.0, gt=0)
    delta: float = option(1e-5, gt=0, lt=1)

    def client_end(
        self, params: Params, carry: State, ctx: LocalContext, summary: LocalSummary
    ) -> tuple[State, State]:
        return {"delta": clipped(tree.sub(ctx.global_params, params), self.clip_norm)}, ctx.client_state

    def upload_weights(self, num_samples: int) -> dict[str, float]:
        return {"delta": 1.0}  # a uniform mean: each client's influence is bounded by S alone

    def server_update(
        self, params: Params, server_state: State, aggregate: Aggregate, info: RoundInfo
    ) -> tuple[Params, State]:
        generator = seeding.torch_generator(info.seed, "dp_noise", info.round)
        std = self.noise_multiplier * self.clip_norm / info.cohort_size
        new = {}
        for k in sorted(params):  # noise drawn in name order
            noise = std * torch.randn(params[k].shape, generator=generator, dtype=torch.float64)
            new[k] = params[k] - aggregate.means["delta"][k] - noise.to(params[k])
        return {k: new[k] for k in params}, server_state

    def round_metrics(self, info: RoundInfo) -> dict[str, float]:
        return {"epsilon": epsilon(self.noise_multiplier, info.cohort_size / info.num_clients, info.round, self.delta)}
