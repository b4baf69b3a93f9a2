"""Data layer: datasets loaded into memory and partitioned across clients."""

from fedsim.data.datasets import Dataset, DatasetBundle, load_dataset, numpy_columns
from fedsim.data.partition import (
    Partition,
    Partitioner,
    heterogeneity,
    partition_dataset,
    partition_table,
)

__all__ = [
    "Dataset",
    "DatasetBundle",
    "Partition",
    "Partitioner",
    "heterogeneity",
    "load_dataset",
    "numpy_columns",
    "partition_dataset",
    "partition_table",
]
