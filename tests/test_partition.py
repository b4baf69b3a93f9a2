"""Partitioners: Dirichlet never fails, each split keeps its contract, bad settings are one-line errors."""

from __future__ import annotations

import time

import datasets
import numpy as np
import pytest
from flwr_datasets import FederatedDataset

from fedsim.data import DatasetBundle, heterogeneity, label_counts, label_distribution, load_dataset, partition_dataset, partition_table
from fedsim.data.flower_partitioner import FedsimDirichletPartitioner
from fedsim.errors import ConfigError
from fedsim.plugins import available


@pytest.fixture(scope="module")
def digits():
    bundle = load_dataset("digits", seed=0, num_clients=1)
    return bundle.train, bundle.tensors("train")[1].numpy()


@pytest.fixture(scope="module")
def synthetic():
    """A train split whose samples name their client (25 of them, shuffled)."""
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.repeat(np.arange(25), rng.integers(2, 9, 25)))
    x = rng.standard_normal((len(ids), 3)).astype(np.float32)
    return DatasetBundle.from_arrays("named", (x, ids % 10), (x[:2], ids[:2] % 10), 10, client_ids=ids).train


def split_statistics(part, labels, num_classes=10):
    return heterogeneity(label_counts(part, labels, num_classes), label_distribution(labels, num_classes), part.moved)


def _assert_each_sample_once(indices, n):
    assert np.array_equal(np.sort(np.concatenate(indices)), np.arange(n))


# The settings where Flower's DirichletPartitioner raises or leaves clients empty (specs/partitioning.md).
@pytest.mark.parametrize(
    ("clients", "alpha", "min_size"),
    [
        (20, 0.05, 10),
        (20, 0.05, 2),
        (100, 0.1, 2),
        (100, 0.05, 1),
        (1000, 0.05, 1),
        (1000, 0.01, 1),
        (10, 1000, 2),
    ],
)
def test_dirichlet_never_fails_nor_leaves_small_clients(digits, clients, alpha, min_size):
    train, labels = digits
    start = time.perf_counter()
    part = partition_dataset(
        train, "dirichlet", num_clients=clients, seed=0, alpha=alpha, min_partition_size=min_size
    )
    assert time.perf_counter() - start < 1.0
    assert len(part.indices) == clients
    assert min(len(idx) for idx in part.indices) >= min_size
    _assert_each_sample_once(part.indices, len(train))
    assert all(idx.dtype == np.int64 and np.all(np.diff(idx) > 0) for idx in part.indices)
    assert split_statistics(part, labels, 10)["moved"] == part.moved


def test_dirichlet_repair_is_reported(digits):
    train, _ = digits
    repaired = partition_dataset(
        train, "dirichlet", num_clients=1000, seed=0, alpha=0.05, min_partition_size=1
    )
    pure = partition_dataset(train, "dirichlet", num_clients=1000, seed=0, alpha=0.05, min_partition_size=0)
    assert repaired.moved > 0 and pure.moved == 0
    assert sum(len(idx) == 0 for idx in pure.indices) > 0  # what the repair fixed


def test_smaller_alpha_means_more_label_skew(digits):
    train, labels = digits
    tv = [
        split_statistics(partition_dataset(train, "dirichlet", num_clients=20, seed=0, alpha=a), labels, 10)[
            "label_tv"
        ]
        for a in (0.05, 0.5, 100.0)
    ]
    assert tv[0] > tv[1] > tv[2] and tv[2] < 0.15


def test_dirichlet_partitioner_in_federated_dataset(digits, tmp_path):
    train, _ = digits
    train.to_parquet(tmp_path / "train.parquet")
    partitioner = FedsimDirichletPartitioner(30, "label", alpha=0.1, min_partition_size=5, seed=1)
    fds = FederatedDataset(
        dataset="parquet",
        data_files={"train": str(tmp_path / "train.parquet")},
        cache_dir=str(tmp_path / "cache"),
        partitioners={"train": partitioner},
    )
    parts = [fds.load_partition(k) for k in range(partitioner.num_partitions)]
    assert all(isinstance(p, datasets.Dataset) and len(p) >= 5 for p in parts)
    assert sum(len(p) for p in parts) == len(train)
    assert [len(p) for p in parts] == [len(idx) for idx in partitioner.partition_indices]
    assert partitioner.moved >= 0


def test_dirichlet_partitioner_self_balancing_caps_sizes(digits):
    train, _ = digits
    partitioner = FedsimDirichletPartitioner(10, "label", alpha=0.1, seed=0, self_balancing=True)
    partitioner.dataset = train
    sizes = [len(partitioner.load_partition(k)) for k in range(10)]
    assert sum(sizes) == len(train) and max(sizes) < 2 * len(train) / 10


@pytest.mark.parametrize("name", ["dirichlet", "iid", "shard", "pathological", "quantity"])
def test_same_seed_same_split_other_seed_other_split(digits, name):
    train, _ = digits

    def split(seed):
        return partition_dataset(train, name, num_clients=10, seed=seed, alpha=0.3).indices

    a, b, c = split(7), split(7), split(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_iid_sizes_are_balanced(digits):
    train, labels = digits
    part = partition_dataset(train, "iid", num_clients=100, seed=0)
    sizes = [len(idx) for idx in part.indices]
    assert max(sizes) - min(sizes) <= 1
    _assert_each_sample_once(part.indices, len(train))
    assert (
        split_statistics(part, labels, 10)["label_tv"]
        < split_statistics(
            partition_dataset(train, "dirichlet", num_clients=100, seed=0, alpha=0.1), labels, 10
        )["label_tv"]
    )


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_clients_hold_at_most_k_classes(digits, k):
    train, labels = digits
    part = partition_dataset(train, "pathological", num_clients=50, seed=0, classes_per_client=k)
    assert all(1 <= len(np.unique(labels[idx])) <= k for idx in part.indices)
    assert len(np.unique(np.concatenate(part.indices))) == sum(len(idx) for idx in part.indices)


def test_shard_clients_get_equal_label_sorted_shards(digits):
    train, labels = digits
    part = partition_dataset(train, "shard", num_clients=50, seed=0, shards_per_client=2)
    sizes = {len(idx) for idx in part.indices}
    assert sizes == {len(train) // 100 * 2}
    assert all(len(np.unique(labels[idx])) <= 4 for idx in part.indices)
    assert len(np.unique(np.concatenate(part.indices))) == 50 * min(sizes)


def test_quantity_skew_follows_alpha(digits):
    train, labels = digits
    skewed = partition_dataset(train, "quantity", num_clients=50, seed=0, alpha=0.1, min_partition_size=3)
    even = partition_dataset(train, "quantity", num_clients=50, seed=0, alpha=1000.0, min_partition_size=3)
    assert split_statistics(skewed, labels, 10)["size_cv"] > 1.0
    assert split_statistics(even, labels, 10)["size_cv"] < 0.2
    assert min(len(idx) for idx in skewed.indices) >= 3
    _assert_each_sample_once(skewed.indices, len(train))


def test_natural_split_matches_client_id(synthetic):
    part = partition_dataset(synthetic, "natural", num_clients=25, seed=0)
    ids = np.asarray(synthetic.with_format("numpy")[:]["client_id"])
    assert all(np.all(ids[idx] == k) for k, idx in enumerate(part.indices))
    _assert_each_sample_once(part.indices, len(synthetic))


def test_partition_table_and_heterogeneity(digits):
    train, labels = digits
    part = partition_dataset(train, "pathological", num_clients=10, seed=0, classes_per_client=1)
    table = partition_table(np.arange(len(part.indices)), label_counts(part, labels, 10))
    assert list(table.columns) == ["client", "num_samples"] + [f"label_{c}" for c in range(10)]
    assert table["num_samples"].tolist() == [len(idx) for idx in part.indices]
    assert (table.filter(like="label_").sum(axis=1) == table["num_samples"]).all()
    stats = split_statistics(part, labels, 10)
    assert stats["label_tv"] > 0.85 and stats["empty_clients"] == 0 and stats["moved"] == 0
    assert stats["min_size"] == table["num_samples"].min() and stats["max_size"] == table["num_samples"].max()


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("dirichlet", {"alpha": 0.0}, "data.alpha must be > 0"),
        ("quantity", {"alpha": -1.0}, "alpha must be > 0"),
        ("iid", {"num_clients": 0}, "data.num_clients = 0 .one client per natural client. needs a partitioner of natural clients"),
        ("iid", {"num_clients": 2000}, "more clients than samples"),
        ("dirichlet", {"num_clients": 200, "min_partition_size": 10}, "more clients than samples"),
        ("pathological", {"classes_per_client": 0}, "data.classes_per_client must be >= 1"),
        ("pathological", {"classes_per_client": 11}, "between 1 and 10"),
        ("pathological", {"num_clients": 700}, "pathological split impossible"),
        ("shard", {"num_clients": 500, "shards_per_client": 3}, "needs 1500 shards"),
        ("fedavg", {}, "unknown partitioner 'fedavg'; choose one of: dirichlet, iid, natural, pathological"),
        ("iidd", {}, "did you mean 'iid'"),
        ("natural", {}, "needs a dataset with natural clients"),
    ],
)
def test_bad_settings_are_one_line_config_errors(digits, name, kwargs, match):
    train, _ = digits
    with pytest.raises(ConfigError, match=match) as err:
        partition_dataset(train, name, **{"num_clients": 10, "seed": 0, **kwargs})
    assert "\n" not in str(err.value)


def test_natural_with_wrong_client_count_says_what_to_set(synthetic):
    with pytest.raises(ConfigError, match="set num_clients=25"):
        partition_dataset(synthetic, "natural", num_clients=10, seed=0)


def test_partitioner_names():
    assert {"dirichlet", "iid", "shard", "pathological", "quantity", "natural"} <= set(available("partitioner"))
