"""Splitting a training set across clients, plus tables and statistics of how skewed a split is.

A partitioner is a subclass of `Partitioner` whose ``partition(train, num_clients, seed, data)``
returns a `Partition` of ``train`` (a Dataset with a "label" column) for ``num_clients``
clients, drawn from ``seed`` and reading its settings from the `[data]` section (``alpha``,
``min_partition_size``, ...). Register it in the `fedsim.partitioners` entry-point group, or
name it as ``data.partitioner = "package.module:Class"`` / ``"path/to/file.py:Class"``; the
built-ins below register the same way.

Shard and pathological splits are Flower Datasets' partitioners, so a Flower user gets the same
split with the same seed; flwr_datasets (2 s to import) is imported only when one of them runs.
Dirichlet is fedsim's own split, because Flower's ``DirichletPartitioner`` redraws the whole
split until every client has ``min_partition_size`` samples, and at small alpha gives up after
its retry limit; `fedsim.data.flower_partitioner` offers the same split as a Flower Datasets
partitioner. IID, quantity skew and natural splits are a few lines of numpy: Flower's IID and
size partitioners cut contiguous, unshuffled blocks (no seed), and its natural-id partitioner
loops in Python behind a progress bar.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from fedsim.config import DataConfig, build_section
from fedsim.data.datasets import numpy_columns
from fedsim.errors import ConfigError
from fedsim.plugins import make

if TYPE_CHECKING:
    import datasets
    import pandas as pd
    from flwr_datasets.partitioner import Partitioner as FlowerPartitioner


@dataclass(frozen=True)
class Partition:
    """Per-client sample indices into the train split (each array sorted ascending).

    ``moved`` counts the samples the Dirichlet repair reassigned to lift small clients to the
    minimum size (0 for other partitioners): how far the split is from a pure Dirichlet draw.
    """

    indices: list[np.ndarray]
    moved: int = 0


class Partitioner:
    """The partitioner interface: per-client sample indices of the train split.

    `by_label`: the split reads each sample's class, which a dataset with a target per position
    (next-token prediction) does not have. `counts_clients`: the split finds its clients in the
    data (one per natural client), so it accepts `data.num_clients = 0` for "as many as there are".
    """

    by_label: ClassVar[bool] = False
    counts_clients: ClassVar[bool] = False

    def partition(self, train: datasets.Dataset, num_clients: int, seed: int, data: DataConfig) -> Partition:
        raise NotImplementedError


def partition_dataset(train: datasets.Dataset, name: str, *, num_clients: int, seed: int, **data) -> Partition:
    """Split ``train`` across ``num_clients`` with partitioner ``name`` (registered or a class path).

    ``data`` holds other `[data]` keys (``alpha``, ``min_partition_size``, ``classes_per_client``,
    ``shards_per_client``; the rest keep their defaults), checked by the schema. Every split
    needs at least ``num_clients * max(min_partition_size, 1)`` samples. Shard and pathological
    splits may leave some samples unassigned (the remainder after equal shards; classes no client
    was dealt); every other built-in assigns each sample exactly once. ``min_partition_size``
    holds by construction for dirichlet (repair), iid and quantity, is checked for shard and
    pathological, and does not apply to natural splits, whose clients are kept as they come.
    """
    section = build_section(DataConfig, {**data, "num_clients": num_clients, "partitioner": name}, "data.")
    partitioner = make("partitioner", name)
    require_client_count(partitioner, num_clients)
    import datasets

    if partitioner.by_label and not isinstance(train.features["label"], datasets.Value):
        raise ConfigError(
            f"partitioner '{name}' splits by class, but the dataset has a target per position: "
            "use partitioner natural, iid or quantity"
        )
    _check_capacity(len(train), num_clients, section.min_partition_size)
    return partitioner.partition(train, num_clients, seed, section)


class Dirichlet(Partitioner):
    """Label skew: per class, client shares ~ Dir(alpha); repaired so no client is below min size."""

    by_label = True

    def partition(self, train: datasets.Dataset, num_clients: int, seed: int, data: DataConfig) -> Partition:
        _check_scalars(num_clients, data.alpha, data.min_partition_size)
        labels = numpy_columns(train, "label")["label"]
        _check_capacity(len(labels), num_clients, data.min_partition_size)
        indices, moved = _dirichlet_split(
            labels, num_clients, data.alpha, data.min_partition_size, np.random.default_rng(seed), False
        )
        return Partition(indices, moved)


class IID(Partitioner):
    """Uniform: a seeded shuffle cut into equal parts."""

    def partition(self, train: datasets.Dataset, num_clients: int, seed: int, data: DataConfig) -> Partition:
        rng = np.random.default_rng(seed)
        return _sorted(np.array_split(rng.permutation(len(train)), num_clients))


class Quantity(Partitioner):
    """Quantity skew: client sizes ~ Dir(alpha) above min size, labels IID within a client."""

    def partition(self, train: datasets.Dataset, num_clients: int, seed: int, data: DataConfig) -> Partition:
        rng = np.random.default_rng(seed)
        sizes = _quantity_sizes(len(train), num_clients, data.alpha, data.min_partition_size, rng)
        return _sorted(np.split(rng.permutation(len(train)), np.cumsum(sizes)[:-1]))


class Natural(Partitioner):
    """One client per value of the dataset's client_id column (synthetic, femnist, shakespeare,
    sent140, data.partition_by); num_clients = 0 takes them all."""

    counts_clients = True

    def partition(self, train: datasets.Dataset, num_clients: int, seed: int, data: DataConfig) -> Partition:
        return _sorted(_natural_split(train, num_clients))


class Shard(Partitioner):
    """FedAvg shards: label-sorted data cut into shards, shards_per_client random shards per client."""

    by_label = True

    def partition(self, train: datasets.Dataset, num_clients: int, seed: int, data: DataConfig) -> Partition:
        labels = numpy_columns(train, "label")["label"]
        if num_clients * data.shards_per_client > len(labels):
            raise ConfigError(
                f"shard split needs {num_clients * data.shards_per_client} shards (num_clients x "
                f"shards_per_client) but the train split has only {len(labels)} samples"
            )
        from flwr_datasets.partitioner import ShardPartitioner

        flower = ShardPartitioner(
            num_clients, "label", num_shards_per_partition=data.shards_per_client, seed=seed
        )
        return _checked(_sorted(_flower_split(flower, labels, "shard", num_clients)), data.min_partition_size, "shard")


class Pathological(Partitioner):
    """Each client holds exactly classes_per_client classes (Flower's PathologicalPartitioner)."""

    by_label = True

    def partition(self, train: datasets.Dataset, num_clients: int, seed: int, data: DataConfig) -> Partition:
        labels = numpy_columns(train, "label")["label"]
        num_classes = len(np.unique(labels))
        if data.classes_per_client > num_classes:
            raise ConfigError(
                f"classes_per_client must be between 1 and {num_classes} (the classes in the train split), "
                f"got {data.classes_per_client}"
            )
        from flwr_datasets.partitioner import PathologicalPartitioner

        flower = PathologicalPartitioner(
            num_clients, "label", data.classes_per_client, class_assignment_mode="first-deterministic", seed=seed
        )
        partition = _sorted(_flower_split(flower, labels, "pathological", num_clients))
        return _checked(partition, data.min_partition_size, "pathological")


def _sorted(indices: list[np.ndarray]) -> Partition:
    return Partition([np.sort(idx).astype(np.int64) for idx in indices])


def _checked(partition: Partition, min_partition_size: int, name: str) -> Partition:
    """`partition`, after checking every client has at least `min_partition_size` samples (and one)."""
    sizes = np.array([len(idx) for idx in partition.indices])
    if sizes.min() < max(min_partition_size, 1):
        raise ConfigError(
            f"{name} split gives client {int(sizes.argmin())} only {int(sizes.min())} samples "
            f"(min_partition_size {min_partition_size}): use fewer clients"
        )
    return partition


def partition_table(client_ids: np.ndarray, counts: np.ndarray) -> pd.DataFrame:
    """One row per client: ``client``, ``num_samples`` and the count of each label ``label_<c>``
    (`counts[i]` of client `client_ids[i]`)."""
    import pandas as pd

    table = pd.DataFrame(counts, columns=[f"label_{c}" for c in range(counts.shape[1])])
    table.insert(0, "num_samples", counts.sum(axis=1))
    table.insert(0, "client", np.asarray(client_ids))
    return table


def heterogeneity(counts: np.ndarray, overall: np.ndarray, moved: int = 0) -> dict[str, float]:
    """Summary statistics of a split, from its [clients, classes] label counts.

    ``label_tv``: sample-weighted mean total-variation distance between each client's label
    distribution and ``overall`` (the whole train split's; 0 = IID, towards 1 = one class per
    client); ``clients``; ``mean_size``, ``std_size``, ``size_cv`` (their ratio), ``min_size``,
    ``max_size`` of the clients' sample counts; ``empty_clients``; ``moved``: samples moved by
    the Dirichlet repair.
    """
    sizes = counts.sum(axis=1)
    client_dist = counts / np.maximum(sizes, 1)[:, None]
    tv = 0.5 * np.abs(client_dist - overall).sum(axis=1)
    return {
        "label_tv": float((tv * sizes).sum() / max(sizes.sum(), 1)),
        "clients": float(len(sizes)),
        "mean_size": float(sizes.mean()),
        "std_size": float(sizes.std()),
        "size_cv": float(sizes.std() / sizes.mean()) if sizes.mean() > 0 else 0.0,
        "min_size": float(sizes.min()),
        "max_size": float(sizes.max()),
        "empty_clients": float((sizes == 0).sum()),
        "moved": float(moved),
    }


def label_counts(partition: Partition, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[clients, classes] matrix of label counts of a partition of `labels`."""
    sizes = [len(idx) for idx in partition.indices]
    owner = np.repeat(np.arange(len(sizes)), sizes)
    counts = np.zeros((len(sizes), num_classes), dtype=np.int64)
    np.add.at(counts, (owner, np.asarray(labels)[np.concatenate(partition.indices).astype(np.int64)]), 1)
    return counts


def label_distribution(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The share of each class among `labels`."""
    return np.bincount(np.asarray(labels), minlength=num_classes) / max(len(labels), 1)


def _check_scalars(num_clients: int, alpha: float, min_partition_size: int) -> None:
    if num_clients < 1:
        raise ConfigError(f"num_clients must be >= 1, got {num_clients}")
    if not alpha > 0:
        raise ConfigError(f"alpha must be > 0, got {alpha}")
    if min_partition_size < 0:
        raise ConfigError(f"min_partition_size must be >= 0, got {min_partition_size}")


def require_client_count(partitioner: Partitioner, num_clients: int) -> None:
    """num_clients = 0 means "one per natural client", which only a partitioner that counts them has."""
    if num_clients == 0 and not partitioner.counts_clients:
        raise ConfigError(
            "data.num_clients = 0 (one client per natural client) needs a partitioner of natural clients "
            "(data.partitioner = 'natural'); set data.num_clients >= 1"
        )


def _check_capacity(n: int, num_clients: int, min_partition_size: int) -> None:
    need = num_clients * max(min_partition_size, 1)
    if need > n:
        raise ConfigError(
            f"more clients than samples: {num_clients} clients x min_partition_size "
            f"{max(min_partition_size, 1)} needs {need} samples, the train split has {n}"
        )


def _dirichlet_split(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    min_size: int,
    rng: np.random.Generator,
    self_balancing: bool,
) -> tuple[list[np.ndarray], int]:
    """Per-class Dir(alpha) draw, then the minimum-size repair; returns (indices, moved)."""
    owner = np.empty(len(labels), dtype=np.int64)
    sizes = np.zeros(num_clients, dtype=np.int64)
    balanced_share = len(labels) / num_clients
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        share = rng.dirichlet(np.full(num_clients, alpha))
        if self_balancing:
            capped = share * (sizes < balanced_share)
            share = capped / capped.sum() if capped.sum() > 0 else share
        bounds = np.rint(np.cumsum(share) * len(members)).astype(np.int64)
        bounds[-1] = len(members)
        counts = np.diff(bounds, prepend=0)
        owner[members] = np.repeat(np.arange(num_clients), counts)
        sizes += counts

    # The largest client always has more than min_size while another is below it, because
    # num_clients * min_size <= len(labels); so each move strictly reduces the total deficit.
    moved = 0
    while sizes.min() < min_size:
        small, large = int(sizes.argmin()), int(sizes.argmax())
        donor_samples = np.flatnonzero(owner == large)
        owner[donor_samples[rng.integers(len(donor_samples))]] = small
        sizes[small] += 1
        sizes[large] -= 1
        moved += 1

    order = np.argsort(owner, kind="stable")
    return np.split(order, np.cumsum(sizes)[:-1]), moved


def _quantity_sizes(
    n: int, num_clients: int, alpha: float, min_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Client sizes: ``min_size`` each plus a Dir(alpha) share of the rest (largest-remainder rounding)."""
    spare = n - num_clients * min_size
    exact = rng.dirichlet(np.full(num_clients, alpha)) * spare
    extra = np.floor(exact).astype(np.int64)
    leftover = spare - extra.sum()
    extra[np.argsort(extra - exact, kind="stable")[:leftover]] += 1
    return min_size + extra


def _natural_split(train: datasets.Dataset, num_clients: int) -> list[np.ndarray]:
    """One client per distinct client_id, in ascending id order (as Flower's NaturalIdPartitioner);
    `num_clients` 0 takes however many there are."""
    if "client_id" not in train.column_names:
        raise ConfigError(
            "partitioner 'natural' needs a dataset with natural clients (synthetic, femnist, shakespeare, "
            "sent140, or hf:<name> with data.partition_by=<column>); choose another partitioner"
        )
    ids = numpy_columns(train, "client_id")["client_id"]
    unique, inverse = np.unique(ids, return_inverse=True)
    if num_clients and len(unique) != num_clients:
        raise ConfigError(
            f"the dataset has {len(unique)} natural clients but num_clients is {num_clients}: "
            f"set num_clients={len(unique)} (or 0: as many as there are)"
        )
    order = np.argsort(inverse, kind="stable")
    return np.split(order, np.cumsum(np.bincount(inverse, minlength=len(unique)))[:-1])


def _flower_split(partitioner: FlowerPartitioner, labels: np.ndarray, name: str, num_clients: int) -> list[np.ndarray]:
    """Run Flower's shard or pathological partitioner on a (label, index) table; return the indices."""
    import datasets

    partitioner.dataset = datasets.Dataset.from_dict({"label": labels, "index": np.arange(len(labels))})
    try:
        with warnings.catch_warnings():
            # Flower warns when fewer than num_classes classes are dealt out; those samples stay unassigned.
            warnings.filterwarnings("ignore", message="Classes: .* will NOT be used")
            # pyarrow deprecation raised inside datasets' sort, which ShardPartitioner calls.
            warnings.filterwarnings("ignore", message="Specifying null_placement", category=FutureWarning)
            return [
                numpy_columns(partitioner.load_partition(k), "index")["index"] for k in range(num_clients)
            ]
    except ValueError as err:
        reason = str(err).split(". ")[0]  # Flower's first sentence; the rest names its own parameters
        raise ConfigError(
            f"{name} split impossible with {num_clients} clients ({reason}): use fewer clients"
        ) from err
