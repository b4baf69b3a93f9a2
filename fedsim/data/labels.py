"""Label scarcity: keep a stratified, seeded share of each client's samples labelled.

With `data.label_ratio < 1` each client's samples are split, seeded by (seed, "labels", client
id), into a labelled part (what every strategy trains on) and an unlabelled part (inputs only,
for semi-supervised strategies) when the client is materialised (`fedsim.population`). The
unlabelled samples' true labels are kept apart for the engine to score pseudo-labels with; no
batch a trainer sees contains them. The same rule holds out validation and local test shares
(`fedsim.data.holdout`).
"""

from __future__ import annotations

import math

import numpy as np


def labelled_mask(labels: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Which samples keep their label: max(1, round(ratio * n)) of them, shared over the classes in
    proportion to their counts (largest remainder, ties broken at random), drawn at random per class."""
    n = len(labels)
    keep = min(n, max(1, math.floor(ratio * n + 0.5)))
    classes, counts = np.unique(labels, return_counts=True)
    quota, remainder = np.divmod(counts * keep, n)
    by_remainder = np.lexsort((rng.random(len(classes)), -remainder))
    quota[by_remainder[: keep - quota.sum()]] += 1
    mask = np.zeros(n, dtype=bool)
    for cls, size in zip(classes, quota):
        mask[rng.choice(np.flatnonzero(labels == cls), size=size, replace=False)] = True
    return mask
