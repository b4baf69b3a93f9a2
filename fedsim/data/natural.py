"""Natural clients: one client per value of a column (a writer, a speaking role, a user), as
Flower Datasets' `NaturalIdPartitioner` makes them, with LEAF's sampling of clients and LEAF's
per-client train/test split.

- `client_codes`: the column's values as client ids 0..K-1 in sorted order of the values, the
  order `NaturalIdPartitioner` numbers its partitions in (partition i is client i).
- `sample_clients`: keep a seeded share of the clients (`data.client_fraction`, LEAF's sampling
  of users), renumbered 0..k-1 in the same order.
- `split_per_client`: each client keeps max(1, floor((1 - test_fraction) n)) of its n samples for
  training and the rest for testing (LEAF's `split_data.py --by_sample`): a seeded random
  choice, or for temporal data (overlapping text windows) the first ones, with the `gap` windows
  after them dropped so that no test window overlaps a training target.

The central test set of such a dataset is the union of its clients' test samples, as in LEAF.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim import seeding
from fedsim.errors import ConfigError


def client_codes(values: np.ndarray) -> np.ndarray:
    """Client id (int64) of every row: its value's rank among the sorted distinct values."""
    return np.unique(values, return_inverse=True)[1].reshape(-1).astype(np.int64)


def sample_clients(codes: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Rows of a seeded `fraction` of the clients (at least one), as a boolean mask; codes of the
    kept rows renumber with `client_codes`."""
    count = int(codes.max(initial=-1)) + 1
    if fraction >= 1:
        return np.ones(len(codes), dtype=bool)
    keep = max(int(np.floor(fraction * count + 1e-9)), 1)
    chosen = seeding.numpy_rng(seed, "client_fraction").choice(count, size=keep, replace=False)
    return np.isin(codes, chosen)


def split_per_client(codes: np.ndarray, test_fraction: float, seed: int, gap: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows), ascending, of LEAF's per-client split; `gap` >= 0 marks temporal data
    (first samples train, `gap` dropped, the rest test), -1 a seeded random split per client."""
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    train, test = [], []
    for rows in np.split(order, bounds):
        n_train = max(1, int(np.floor((1 - test_fraction) * len(rows) + 1e-9)))
        if gap >= 0:
            train.append(rows[:n_train])
            test.append(rows[n_train + gap :])
        else:
            rows = seeding.numpy_rng(seed, "natural_test", int(codes[rows[0]])).permutation(rows)
            train.append(rows[:n_train])
            test.append(rows[n_train:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def natural_column(column_names: list[str], column: str, dataset: str) -> str:
    """`column` if the dataset has it, else one ConfigError line naming the columns there are."""
    if column not in column_names:
        raise ConfigError(
            f"dataset {dataset!r} has no column {column!r} to take natural clients from "
            f"(data.partition_by); columns: {', '.join(column_names)}"
        )
    return column


@dataclass(frozen=True)
class NaturalSplit:
    """Row numbers of a dataset's training and test samples, and each training row's client."""

    train: np.ndarray
    test: np.ndarray
    train_clients: np.ndarray

    def rows(self, x: np.ndarray, y: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """((x, y) of the training rows, (x, y) of the test rows) of arrays over every row."""
        return (x[self.train], y[self.train]), (x[self.test], y[self.test])


def natural_split(values: np.ndarray, client_fraction: float, test_fraction: float, seed: int, gap: int = -1) -> NaturalSplit:
    """Clients from `values` (one per distinct value), a seeded `client_fraction` of them kept,
    each split into training and test samples (`split_per_client`)."""
    kept, codes = client_rows(values, client_fraction, seed)
    train, test = split_per_client(codes, test_fraction, seed, gap)
    if len(test) == 0:
        raise ConfigError(
            f"no client has enough samples to hold out a test share at data.test_fraction = {test_fraction}"
            + (f" (a temporal split also drops {gap} windows after each client's training ones)" if gap > 0 else "")
            + ": raise data.test_fraction"
        )
    return NaturalSplit(kept[train], kept[test], codes[train])


def client_rows(values: np.ndarray, client_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows kept, their client ids renumbered 0..k-1): a seeded `client_fraction` of the clients."""
    codes = client_codes(values)
    kept = np.flatnonzero(sample_clients(codes, client_fraction, seed))
    return kept, client_codes(codes[kept])
