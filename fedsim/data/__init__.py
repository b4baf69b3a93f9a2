"""Data layer: datasets loaded into memory and partitioned across clients."""

from fedsim.data.datasets import DATASETS, DatasetBundle, load_dataset, numpy_columns
from fedsim.data.partition import (
    PARTITIONERS,
    FedsimDirichletPartitioner,
    Partition,
    heterogeneity,
    partition_dataset,
    partition_table,
)

__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "DatasetBundle",
    "FedsimDirichletPartitioner",
    "Partition",
    "heterogeneity",
    "load_dataset",
    "numpy_columns",
    "partition_dataset",
    "partition_table",
]
