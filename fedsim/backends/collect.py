"""The one reduction of a round: every executor hands its clients' updates to a `RoundCollector`.

Uploads go into a float64 `WeightedSum` in the order clients are added (cohort order within an
executor; the Ray backend merges its workers' partial collectors in worker order), so serial,
Ray and Flower agree bit for bit. A vmapped chunk adds its stacked uploads in one contraction
per block of `REDUCE_BLOCK` clients: the same exact float64 products, summed in another order. Client states, reports and (for strategies that need them)
every upload are kept per client and returned in the order the caller asks for.
"""

from __future__ import annotations

import torch

from fedsim.aggregate import WeightedSum
from fedsim.backends.base import ClientReport, RoundOutput
from fedsim.local import ClientUpdate
from fedsim.strategy import State, Strategy
from fedsim.trainer import join_state


REDUCE_BLOCK = 256  # clients per float64 contraction when reducing a chunk's stacked uploads


class RoundCollector:
    """Accumulates the updates of a cohort (or of a worker's share of it) into a `RoundOutput`."""

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy
        self.total = WeightedSum()
        self.uploads: dict[int, State] | None = {} if strategy.needs_all_uploads else None
        self.states: dict[int, State] = {}
        self.reports: dict[int, ClientReport] = {}

    def add(self, client_id: int, update: ClientUpdate, activation_bytes: int = 0, cuda_bytes: int = 0) -> None:
        """One client's update, reduced now, with the peak memory it trained in (`MemoryMeter`)."""
        self.total.add(update.upload, self.strategy.upload_weights(update.num_samples))
        self.keep(client_id, update.upload, join_state(update.strategy_state, update.trainer_state))
        self.report(
            ClientReport(
                client_id, update.num_samples, update.num_steps, update.loss, update.diagnostics,
                activation_bytes, cuda_bytes,
            )
        )

    def add_stacked(self, uploads: State, num_samples: list[int]) -> None:
        """A chunk's stacked uploads (row i: the i-th client), client i weighted by its samples.

        One float64 contraction per block of `REDUCE_BLOCK` clients, so the float64 copy stays
        small (a whole chunk's copy is several times slower to write and read).
        """
        total = self.total
        weights = [self.strategy.upload_weights(n) for n in num_samples]
        for field, values in uploads.items():
            field_weights = [w[field] for w in weights]
            w = torch.tensor(field_weights, dtype=torch.float64, device=next(iter(values.values())).device)
            acc = total.sums.setdefault(field, {})
            for name, value in values.items():
                for start in range(0, len(w), REDUCE_BLOCK):
                    block = value[start : start + REDUCE_BLOCK].detach().to(torch.float64)
                    term = torch.tensordot(w[start : start + REDUCE_BLOCK], block, dims=1)
                    acc[name] = acc[name] + term if name in acc else term
            total.weights[field] = total.weights.get(field, 0.0) + sum(field_weights)
        total.count += len(weights)

    def keep(self, client_id: int, upload: State, state: State) -> None:
        """A client's new state, and its upload where the strategy needs every upload (for
        executors that reduce uploads themselves, e.g. stacked)."""
        self.states[client_id] = state
        if self.uploads is not None:
            self.uploads[client_id] = upload

    def report(self, report: ClientReport) -> None:
        self.reports[report.client_id] = report

    def merge(self, part: RoundOutput) -> None:
        """Another collector's output (a Ray worker's share); merge parts in a fixed order."""
        self.total.merge(part.total)
        for i, report in enumerate(part.reports):
            cid = report.client_id
            self.keep(cid, part.uploads[i] if part.uploads is not None else None, part.client_states[cid])
            self.report(report)

    def output(self, client_ids: list[int]) -> RoundOutput:
        """The collected round, per-client parts in the order of `client_ids`."""
        return RoundOutput(
            self.total,
            [self.uploads[cid] for cid in client_ids] if self.uploads is not None else None,
            {cid: self.states[cid] for cid in client_ids},
            [self.reports[cid] for cid in client_ids],
        )
