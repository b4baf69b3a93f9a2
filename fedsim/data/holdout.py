"""Held-out evaluation data, split once before training, stratified and seeded:

- a validation split of the train pool (`data.validation_fraction`), taken before the pool is
  partitioned, for tuning hyperparameters without looking at the test set;
- each client's local test share of its own partition (`data.client_test_fraction`), so a
  client's test data follows its own label skew (federated evaluation); taken, seeded by
  (seed, "client_test", client id), when the client is materialised (`fedsim.population`).

Both keep at least one training sample wherever there was one (`labelled_mask`'s rule), and
stratify by each sample's class (a sequence's final target, `fedsim.loss.sample_labels`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fedsim import seeding
from fedsim.data.datasets import DatasetBundle
from fedsim.data.labels import labelled_mask
from fedsim.loss import sample_labels

Split = tuple[torch.Tensor, torch.Tensor]


def split_validation(dataset: DatasetBundle, fraction: float, seed: int) -> tuple[DatasetBundle, Split | None]:
    """The dataset with `fraction` of its train split held out, and the held-out (x, y); None when 0."""
    if fraction == 0:
        return dataset, None
    x, y = dataset.tensors("train")
    keep = labelled_mask(sample_labels(y).numpy(), 1 - fraction, seeding.numpy_rng(seed, "validation"))
    reduced = dataclasses.replace(dataset, train=dataset.train.select(np.flatnonzero(keep)))
    held = torch.from_numpy(~keep)
    return reduced, (x[held], y[held])
