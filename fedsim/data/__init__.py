"""Data layer: datasets loaded into memory and partitioned across clients.

Importing it costs numpy only: Hugging Face datasets, pandas and torch are imported where a
dataset is built, a table is made or tensors are taken; flwr_datasets only by the shard and
pathological splits and by `fedsim.data.flower_partitioner`.
"""

from fedsim.data.datasets import Dataset, DatasetBundle, load_dataset, numpy_columns
from fedsim.data.partition import (
    Partition,
    Partitioner,
    heterogeneity,
    label_counts,
    label_distribution,
    partition_dataset,
    partition_table,
)

__all__ = [
    "Dataset",
    "DatasetBundle",
    "Partition",
    "Partitioner",
    "heterogeneity",
    "label_counts",
    "label_distribution",
    "load_dataset",
    "numpy_columns",
    "partition_dataset",
    "partition_table",
]
