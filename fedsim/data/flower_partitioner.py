"""fedsim's Dirichlet split as a Flower Datasets partitioner, for `flwr_datasets.FederatedDataset`.

The same split as ``data.partitioner = "dirichlet"`` with the same seed. It lives apart from
`fedsim.data.partition` because subclassing Flower's ``Partitioner`` imports flwr_datasets
(2 s), which a fedsim run needs only for the shard and pathological splits.
"""

from __future__ import annotations

import datasets
import numpy as np
from flwr_datasets import partitioner as flwr

from fedsim.data.datasets import numpy_columns
from fedsim.data.partition import _check_capacity, _check_scalars, _dirichlet_split


class FedsimDirichletPartitioner(flwr.Partitioner):
    """Dirichlet label skew that never fails and never leaves a client below min_partition_size.

    For each class, client proportions are drawn from Dir(alpha) (with ``self_balancing``, clients
    already holding their balanced share get none of the next class) and the shuffled class indices
    are cut by the cumulative proportions. Then, while a client has fewer than
    ``min_partition_size`` samples, a random sample moves to it from the currently largest client.
    The whole split is one seeded pass: no redrawing until a lucky draw.
    """

    def __init__(
        self,
        num_partitions: int,
        partition_by: str,
        alpha: float,
        min_partition_size: int = 2,
        seed: int = 42,
        self_balancing: bool = False,
    ) -> None:
        super().__init__()
        _check_scalars(num_partitions, alpha, min_partition_size)
        self._num_partitions = num_partitions
        self._partition_by = partition_by
        self._alpha = alpha
        self._min_partition_size = min_partition_size
        self._seed = seed
        self._self_balancing = self_balancing
        self._split: tuple[list[np.ndarray], int] | None = None

    @property
    def num_partitions(self) -> int:
        """Total number of partitions."""
        return self._num_partitions

    @property
    def partition_indices(self) -> list[np.ndarray]:
        """Sorted dataset indices of each partition (computed on first use)."""
        return self._computed()[0]

    @property
    def moved(self) -> int:
        """Samples moved by the minimum-size repair."""
        return self._computed()[1]

    def load_partition(self, partition_id: int) -> datasets.Dataset:
        """The rows of partition ``partition_id`` as a Dataset."""
        return self.dataset.select(self.partition_indices[partition_id])

    def _computed(self) -> tuple[list[np.ndarray], int]:
        if self._split is None:
            labels = numpy_columns(self.dataset, self._partition_by)[self._partition_by]
            _check_capacity(len(labels), self._num_partitions, self._min_partition_size)
            self._split = _dirichlet_split(
                labels,
                self._num_partitions,
                self._alpha,
                self._min_partition_size,
                np.random.default_rng(self._seed),
                self._self_balancing,
            )
        return self._split
