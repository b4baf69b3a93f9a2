"""The federation's clients, each materialised only when a round or an evaluation needs it.

A `Population` is N clients whose data is a function of (seed, client id): rows of a fixed
dataset (`IndexedPopulation`: a partition's index view of the train split, held once) or
generated on demand (`GeneratedPopulation`: a dataset that produces any client of its population
without producing the others, e.g. LEAF Synthetic). Materialising a client applies, per client
and seeded by (seed, purpose, client id), its local test share (`data.client_test_fraction`),
its label split (`data.label_ratio`) and, for a label-flipping attacker, the flipped labels; so
a client is the same whichever process, backend or round asks for it.

What is O(N), once, at start: the clients' sizes (`Population.sizes`, one int64 each) and, for
a fixed dataset, its partition (a row order and N + 1 bounds). Nothing else is held per client.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedsim import seeding
from fedsim.attacks import flip_labels
from fedsim.data.labels import labelled_mask
from fedsim.data.partition import Partition, label_counts, label_distribution
from fedsim.loss import sample_labels

if TYPE_CHECKING:
    from fedsim.data.datasets import Dataset, DatasetBundle, DatasetInfo
    from fedsim.config import DataConfig

Split = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Holdouts:
    """How a client's data is split and corrupted when it is materialised."""

    seed: int
    client_test_fraction: float = 0.0  # its local test share
    label_ratio: float = 1.0  # the share of its training samples that keep their label
    attackers: frozenset[int] = frozenset()  # the run's Byzantine clients
    flip_labels: bool = False  # they attack by training on flipped labels (attack.name = "label_flip")

    def labelled_sizes(self, sizes: np.ndarray) -> np.ndarray:
        """How many labelled training samples a client of `sizes` samples has (`labelled_mask`'s count)."""
        sizes = np.asarray(sizes, dtype=np.int64)
        if self.client_test_fraction > 0:
            sizes = _kept(sizes, 1 - self.client_test_fraction)
        return _kept(sizes, self.label_ratio) if self.label_ratio < 1 else sizes


def _kept(n: np.ndarray, ratio: float) -> np.ndarray:
    """`labelled_mask`'s count, max(1, round(ratio * n)) capped at n, for every n."""
    return np.minimum(n, np.maximum(1, np.floor(ratio * n + 0.5).astype(np.int64)))


@dataclass(frozen=True)
class Client:
    """One materialised client, its tensors on one device."""

    x: torch.Tensor  # labelled training inputs
    y: torch.Tensor  # their labels (flipped for a label-flipping attacker)
    unlabelled: torch.Tensor  # inputs without a label (empty unless data.label_ratio < 1)
    hidden: torch.Tensor  # the unlabelled inputs' true labels: for diagnostics only, never trained on
    test: Split  # its local test share (empty unless data.client_test_fraction > 0)

    @property
    def data(self) -> Split:
        return self.x, self.y


class Population(ABC):
    """N clients, each materialised from (seed, client id) by `client`.

    Subclasses give `raw(cid, device)`: a client's whole data before its holdouts, and set `test`
    and `validation`, the central evaluation sets. `sizes` holds every client's number of
    labelled training samples; `num_classes`, `input_shape`, `vocab_size` and `label_shape`
    describe the data as `DatasetBundle` does.
    """

    test: Split
    validation: Split | None

    def __init__(self, raw_sizes: np.ndarray, holdouts: Holdouts, bundle_info: DatasetBundle | DatasetInfo) -> None:
        self.holdouts = holdouts
        self.sizes = holdouts.labelled_sizes(raw_sizes)
        self.name, self.num_classes = bundle_info.name, bundle_info.num_classes
        self.input_shape, self.vocab_size = bundle_info.input_shape, bundle_info.vocab_size
        self.label_shape = bundle_info.label_shape

    def __len__(self) -> int:
        return len(self.sizes)

    @abstractmethod
    def raw(self, cid: int, device: torch.device) -> Split: ...

    def client(self, cid: int, device: torch.device | str = "cpu") -> Client:
        """Client `cid`'s data on `device`: its labelled training data, unlabelled inputs, their
        hidden labels and local test share, split as `Holdouts` says."""
        device = torch.device(device)
        h = self.holdouts
        x, y = self.raw(cid, device)
        test = (x[:0], y[:0])
        if h.client_test_fraction > 0:
            keep = self._mask(y, 1 - h.client_test_fraction, "client_test", cid)
            test, (x, y) = (x[~keep], y[~keep]), (x[keep], y[keep])
        unlabelled, hidden = x[:0], y[:0]
        if h.label_ratio < 1:
            keep = self._mask(y, h.label_ratio, "labels", cid)
            unlabelled, hidden, x, y = x[~keep], y[~keep], x[keep], y[keep]
        if h.flip_labels and cid in h.attackers:
            y = flip_labels(y, self.num_classes)
        return Client(x, y, unlabelled, hidden, test)

    def _mask(self, y: torch.Tensor, ratio: float, purpose: str, cid: int) -> torch.Tensor:
        labels = sample_labels(y).cpu().numpy()
        mask = labelled_mask(labels, ratio, seeding.numpy_rng(self.holdouts.seed, purpose, cid))
        return torch.from_numpy(mask).to(y.device)

    def gather(self, client_ids: list[int], device: torch.device) -> Split:
        """The labelled training data of `client_ids`, concatenated in that order on `device`."""
        clients = [self.client(cid, device) for cid in client_ids]
        return torch.cat([c.x for c in clients]), torch.cat([c.y for c in clients])

    @abstractmethod
    def data_bytes(self) -> int:
        """About how many bytes all clients' data takes (what a process holding it pays)."""

    @abstractmethod
    def label_counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(client ids, their [clients, classes] label counts, the labels' overall distribution),
        for the split's statistics: every client of a fixed dataset, a sample of a generated one."""

    def moved(self) -> int:
        """Samples the split's repair moved (the Dirichlet partitioner's), 0 otherwise."""
        return 0


class IndexedPopulation(Population):
    """Clients as index views of a fixed dataset's train split (held once per device)."""

    def __init__(
        self, bundle: DatasetBundle, partition: Partition, holdouts: Holdouts, validation: Split | None = None
    ) -> None:
        sizes = np.array([len(idx) for idx in partition.indices], dtype=np.int64)
        super().__init__(sizes, holdouts, bundle)
        self.partition = partition
        self.rows = np.concatenate(partition.indices).astype(np.int64)
        self.bounds = np.concatenate([[0], np.cumsum(sizes)])
        self.train = tuple(t.numpy() for t in bundle.tensors("train"))  # numpy: Ray ships it zero-copy
        self.test, self.validation = bundle.tensors("test"), validation
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_on": {}}  # a process it is sent to moves the data itself

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, y, rows) of the train split on `device`, moved there once (on the CPU, views of the
        arrays, which may be a Ray object store's read-only buffers: training only reads them)."""
        if device not in self._on:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                tensors = [torch.from_numpy(a) for a in (*self.train, self.rows)]
            self._on[device] = tuple(t.to(device) for t in tensors)
        return self._on[device]

    def raw(self, cid: int, device: torch.device) -> Split:
        x, y, rows = self.on(device)
        index = rows[int(self.bounds[cid]) : int(self.bounds[cid + 1])]
        return x[index], y[index]

    def data_bytes(self) -> int:
        return sum(a.nbytes for a in self.train)

    def label_counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        labels = sample_labels(torch.from_numpy(self.train[1])).numpy()
        counts = label_counts(self.partition, labels, self.num_classes)
        return np.arange(len(self)), counts, label_distribution(labels, self.num_classes)

    def moved(self) -> int:
        return self.partition.moved


class GeneratedPopulation(Population):
    """Clients a dataset generates on demand (`Dataset.generates_clients`): `client_data(data,
    seed, cid, size)` makes client `cid`'s samples; its first `test_fraction` share (at least one
    sample stays) is its part of the central test set, which pools the test shares of
    `data.test_clients` seeded clients (all for 0, or when N is smaller)."""

    def __init__(self, dataset: Dataset, data: DataConfig, seed: int, holdouts: Holdouts) -> None:
        self.dataset, self.data, self.seed = dataset, data, seed
        self.full_sizes = sizes = np.asarray(dataset.client_sizes(data, seed), dtype=np.int64)
        self.num_test = np.minimum(np.rint(sizes * data.test_fraction).astype(np.int64), sizes - 1)
        super().__init__(sizes - self.num_test, holdouts, dataset.info(data))
        n, count = len(sizes), data.test_clients
        self.test_clients = np.arange(n)
        if 0 < count < n:
            self.test_clients = np.sort(seeding.numpy_rng(seed, "test_clients").choice(n, count, replace=False))
        parts = [self._generated(int(cid)) for cid in self.test_clients]
        cuts = [int(self.num_test[c]) for c in self.test_clients]
        self.test = tuple(torch.cat([p[i][:cut] for p, cut in zip(parts, cuts)]) for i in (0, 1))
        self.validation = None
        # the split's statistics, over the test clients' training samples
        labels = [sample_labels(y[cut:]).numpy() for (_, y), cut in zip(parts, cuts)]
        self.test_client_counts = np.stack([np.bincount(lab, minlength=self.num_classes) for lab in labels])
        self.overall = label_distribution(np.concatenate(labels), self.num_classes)

    def _generated(self, cid: int) -> Split:
        """Client `cid`'s whole generated data: its test share first, then its training samples."""
        x, y = self.dataset.client_data(self.data, self.seed, cid, int(self.full_sizes[cid]))
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))

    def raw(self, cid: int, device: torch.device) -> Split:
        x, y = self._generated(cid)
        start = int(self.num_test[cid])
        return x[start:].to(device), y[start:].to(device)

    def data_bytes(self) -> int:
        return 0  # nothing is held: every process generates the clients it trains

    def label_counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.test_clients, self.test_client_counts, self.overall


class ClientView:
    """Client id -> client `cid` of `population` materialised on `device` (its `field` alone, if
    named): what a one-by-one executor and the pseudo-label diagnostics index."""

    def __init__(self, population: Population, device: torch.device | str = "cpu", field: str = "") -> None:
        self.population, self.device, self.field = population, torch.device(device), field

    def __len__(self) -> int:
        return len(self.population)

    def __getitem__(self, cid: int):
        client = self.population.client(cid, self.device)
        return getattr(client, self.field) if self.field else client
