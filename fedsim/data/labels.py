"""Label scarcity: keep a stratified, seeded share of each client's samples labelled.

With `data.label_ratio < 1` each client's samples are split once, before training, into a
labelled part (what every strategy trains on) and an unlabelled part (inputs only, for
semi-supervised strategies). The unlabelled samples' true labels come back separately so the
engine can score pseudo-labels; nothing handed to a backend contains them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedsim import seeding
from fedsim.loss import sample_labels


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


def split_labels(
    client_data: list[tuple[torch.Tensor, torch.Tensor]], ratio: float, seed: int
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[torch.Tensor], list[torch.Tensor]]:
    """Per client, seeded by (seed, "labels", client id): the labelled (x, y) in their original
    order, the unlabelled x, and the unlabelled samples' hidden labels (for diagnostics only).
    With ratio 1 every sample stays labelled and the unlabelled tensors are empty."""
    labelled, unlabelled, hidden = [], [], []
    for cid, (x, y) in enumerate(client_data):
        mask = torch.from_numpy(labelled_mask(sample_labels(y).numpy(), ratio, seeding.numpy_rng(seed, "labels", cid)))
        labelled.append((x[mask], y[mask]))
        unlabelled.append(x[~mask])
        hidden.append(y[~mask])
    return labelled, unlabelled, hidden
