"""The strategy interface: what a server strategy and its client-side rule must provide.

A strategy is a dataclass whose fields are its hyperparameters (the `[strategy]` table of a
config). The base class is FedAvg; a new algorithm overrides only what differs.

Data that travels is a `State`: named groups of parameter-shaped trees, e.g.
`{"c": {...}}` for SCAFFOLD's control variate. Client-side methods (`client_begin`,
`local_step`, `client_end`) must be pure tensor functions of their arguments, with no
Python branching on tensor values, so every backend can run them unchanged, including
the vectorized one that maps them over a stacked cohort with `torch.func.vmap`.

One round, as the engine runs it::

    broadcast = strategy.broadcast(server_state)            # extras sent with the params
    for each sampled client (on some backend):
        ctx   = LocalContext(global_params, broadcast, client_state, lr, num_steps)
        carry = strategy.client_begin(ctx)
        for each local batch:
            loss, direction, carry = strategy.local_step(params, batch, grad_fn, carry, ctx)
            params = sgd(params, direction)                 # engine: clip, weight decay, momentum
        upload, client_state = strategy.client_end(params, carry, ctx, summary)
    params, server_state = strategy.server_update(params, server_state, aggregate, info)

Uploads are reduced by the engine (or by each Ray worker) to one weighted mean per field,
with the weights `upload_weights` gives. A strategy that needs every upload (an SVD over
clients, a median) sets `needs_all_uploads = True` and reads `aggregate.uploads`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from fedsim import tree
from fedsim.loss import cross_entropy
from fedsim.tree import Params

State = dict[str, Params]
Batch = tuple[torch.Tensor, torch.Tensor]
GradFn = Callable[[Params, Batch], tuple[torch.Tensor, Params]]


@dataclass(frozen=True)
class LocalContext:
    """What a client knows while it trains: the round's global model and extras, its own state."""

    global_params: Params
    broadcast: State
    client_state: State
    lr: float
    num_steps: int | torch.Tensor  # its scheduled local steps this round (a 0-d tensor under vmap)


@dataclass(frozen=True)
class LocalSummary:
    """Facts about a finished local run, for rules that normalise by the real work done.

    The vectorized backend passes `num_steps` and `num_samples` as per-client 0-d int64 tensors
    inside vmap: compute with them as with ints. A `client_end` that needs Python ints (an `if`
    on them, `int()`, `range`) still works there, at the cost of one call per group of clients
    with equal counts.
    """

    num_steps: int
    num_samples: int
    lr: float
    momentum: float  # the local SGD's momentum (`train.momentum`), for rules that count effective steps


@dataclass(frozen=True)
class RoundInfo:
    """Facts the server update may need."""

    round: int
    lr: float
    num_clients: int  # N, all clients of the federation
    cohort_size: int  # clients whose uploads arrived this round
    seed: int  # the run's seed: server-side randomness (DP noise) draws from fedsim.seeding with it


@dataclass
class Aggregate:
    """The reduced uploads of one round.

    `means[field]` is the weighted mean of that field over the cohort (weights from
    `upload_weights`); `uploads` and `num_samples` are filled only for strategies with
    `needs_all_uploads`, in cohort order.
    """

    means: State
    uploads: list[State] | None = None
    num_samples: list[int] | None = None

    def stacked(self, field: str = "delta") -> Params:
        """Each parameter of `field` stacked over the cohort's uploads (dim 0, cohort order)."""
        names = self.uploads[0][field]
        return {name: torch.stack([upload[field][name] for upload in self.uploads]) for name in names}


@dataclass
class Strategy:
    """FedAvg: the default for every hook. Subclass and override what your algorithm changes."""

    name: ClassVar[str] = "fedavg"
    needs_all_uploads: ClassVar[bool] = False
    metric_columns: ClassVar[tuple[str, ...]] = ()  # extra metrics.csv columns (`round_metrics`)

    def validate(self) -> None:
        """Raise `ConfigError` for hyperparameter values that make no sense."""

    def validate_uploads(self, uploads: int) -> None:
        """Raise `ConfigError` if a round of `uploads` client uploads is too few for the rule
        (Krum's n > 2f + 2); checked before any work with the uploads every round gets."""

    # ---- server side -------------------------------------------------------------------
    def init_server_state(self, params: Params) -> State:
        return {}

    def broadcast(self, server_state: State) -> State:
        """Extras sent with the global params to every sampled client."""
        return {}

    def server_update(
        self, params: Params, server_state: State, aggregate: Aggregate, info: RoundInfo
    ) -> tuple[Params, State]:
        return tree.sub(params, aggregate.means["delta"]), server_state

    # ---- client side (pure tensor functions) ---------------------------------------------
    def init_client_state(self, params: Params) -> State:
        """The state of a client that has never participated ({} for stateless strategies)."""
        return {}

    def objective(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The local loss the gradient function differentiates (cross-entropy over target positions)."""
        return cross_entropy(logits, targets)

    def client_begin(self, ctx: LocalContext) -> State:
        """Per-client values computed once before local training (the `carry`)."""
        return {}

    def local_step(
        self, params: Params, batch: Batch, grad_fn: GradFn, carry: State, ctx: LocalContext
    ) -> tuple[torch.Tensor, Params, State]:
        """One local step: returns (loss, descent direction, carry). Plain SGD by default."""
        loss, grads = grad_fn(params, batch)
        return loss, grads, carry

    def client_end(
        self, params: Params, carry: State, ctx: LocalContext, summary: LocalSummary
    ) -> tuple[State, State]:
        """What the client uploads, and its new persistent state."""
        return {"delta": tree.sub(ctx.global_params, params)}, ctx.client_state

    def upload_weights(self, num_samples: int) -> dict[str, float]:
        """Weight of this client's upload in each field's mean."""
        return {"delta": float(num_samples)}

    def round_metrics(self, info: RoundInfo) -> dict[str, float]:
        """Values of `metric_columns` after the server update of round `info.round` (e.g. the
        privacy spent so far)."""
        return {}
