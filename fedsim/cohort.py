"""How many clients a round samples and how many of them report: fixed by the config, so a
strategy that needs a number of uploads is checked against it before any work."""

from __future__ import annotations

import math


def cohort_size(num_clients: int, fraction: float, per_round: int = 0) -> int:
    """m = `per_round` clients when > 0 (at most N), else max(floor(C * N), 1), robust to float
    error in C * N."""
    if per_round > 0:
        return min(per_round, num_clients)
    return max(math.floor(fraction * num_clients + 1e-9), 1)


def reporting_size(cohort: int, dropout: float) -> int:
    """The sampled clients that report: the cohort less its `train.dropout` share (at least one)."""
    return max(cohort - math.floor(dropout * cohort + 1e-9), 1)
