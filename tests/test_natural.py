"""Natural clients from a column (Flower's NaturalIdPartitioner numbering), LEAF's sampling of
clients and per-client train/test split, and the text encodings of the text benchmarks."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from fedsim.data import load_dataset, partition_dataset
from fedsim.data.natural import client_codes, natural_split, sample_clients, split_per_client
from fedsim.data.text import CHARACTER_VOCAB, LEAF_CHARACTERS, encode_characters, encode_words, word_vocabulary
from fedsim.errors import ConfigError


def test_client_codes_number_clients_in_sorted_order_of_their_ids():
    codes = client_codes(np.array(["bob", "amy", "bob", "cid", "amy"], dtype=object))
    assert codes.tolist() == [1, 0, 1, 2, 0]
    assert client_codes(np.array([7, 3, 7, 9])).tolist() == [1, 0, 1, 2]


def test_sample_clients_keeps_a_seeded_share_of_whole_clients():
    codes = np.repeat(np.arange(10), 3)
    kept = sample_clients(codes, 0.3, seed=1)
    assert len(np.unique(codes[kept])) == 3 and kept.sum() == 9  # whole clients, all their rows
    assert np.array_equal(kept, sample_clients(codes, 0.3, seed=1))
    assert not np.array_equal(kept, sample_clients(codes, 0.3, seed=2))
    assert sample_clients(codes, 0.01, seed=1).sum() == 3  # at least one client
    assert sample_clients(codes, 1.0, seed=1).all()


def test_split_per_client_follows_leaf_sizes_and_seeds():
    codes = np.repeat(np.arange(4), [1, 5, 10, 20])
    train, test = split_per_client(codes, 0.2, seed=0)
    assert np.intersect1d(train, test).size == 0 and np.union1d(train, test).size == len(codes)
    # max(1, floor(0.8 n)) training samples per client: 1, 4, 8, 16
    assert np.bincount(codes[train]).tolist() == [1, 4, 8, 16]
    again, _ = split_per_client(codes, 0.2, seed=0)
    other, _ = split_per_client(codes, 0.2, seed=1)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


def test_temporal_split_trains_on_the_first_windows_and_skips_the_gap():
    codes = np.repeat(np.arange(2), [10, 20])
    train, test = split_per_client(codes, 0.3, seed=0, gap=3)
    assert train.tolist() == [*range(7), *range(10, 24)]
    assert test.tolist() == [*range(27, 30)]  # client 0's 3 left are all in the gap


def test_a_split_without_test_samples_is_one_line():
    with pytest.raises(ConfigError, match="no client has enough samples to hold out a test share.*drops 79 windows"):
        natural_split(np.repeat(np.arange(3), 50), 1.0, 0.2, 0, gap=79)


def _users_dataset(tmp_path, with_test: bool) -> str:
    rng = np.random.default_rng(0)
    users = rng.choice(["ann", "bo", "cy", "dee", "ed"], size=60)
    features = datasets.Features({"x": datasets.Value("float32"), "label": datasets.ClassLabel(num_classes=3), "user": datasets.Value("string")})
    train = datasets.Dataset.from_dict(
        {"x": np.arange(60, dtype=np.float32), "label": rng.integers(0, 3, 60), "user": users}, features=features
    )
    splits = {"train": train}
    if with_test:
        splits["test"] = train.select(range(10))
    datasets.DatasetDict(splits).save_to_disk(tmp_path / "users")
    return str(tmp_path / "users")


def test_partition_by_any_column_matches_flower_natural_id_partitioner(tmp_path):
    from flwr_datasets.partitioner import NaturalIdPartitioner

    path = _users_dataset(tmp_path, with_test=True)
    bundle = load_dataset("hf:users", seed=0, num_clients=0, path=path, partition_by="user")
    partition = partition_dataset(bundle.train, "natural", num_clients=0, seed=0)
    flower = NaturalIdPartitioner(partition_by="user")
    flower.dataset = datasets.load_from_disk(path)["train"]
    assert len(partition.indices) == flower.num_partitions == 5
    x = bundle.tensors("train")[0].numpy()
    for k, rows in enumerate(partition.indices):
        assert x[rows].ravel().tolist() == flower.load_partition(k)["x"]


def test_partition_by_without_a_test_split_splits_each_client(tmp_path):
    path = _users_dataset(tmp_path, with_test=False)
    bundle = load_dataset("hf:users", seed=0, num_clients=0, path=path, partition_by="user", test_fraction=0.25)
    train_x, test_x = (bundle.tensors(s)[0].numpy().ravel() for s in ("train", "test"))
    assert len(train_x) + len(test_x) == 60 and not set(train_x) & set(test_x)
    users = np.asarray(datasets.load_from_disk(path)["train"]["user"])
    assert set(users[test_x.astype(int)]) == set(users)  # every client held some out
    half = load_dataset("hf:users", seed=0, num_clients=0, path=path, partition_by="user", client_fraction=0.4)
    assert len(np.unique(half.train["client_id"])) == 2


def test_partition_by_a_missing_column_names_the_columns(tmp_path):
    path = _users_dataset(tmp_path, with_test=True)
    with pytest.raises(ConfigError, match="has no column 'writer' to take natural clients from .*columns: x, label, user"):
        load_dataset("hf:users", seed=0, num_clients=0, path=path, partition_by="writer")


def test_num_clients_zero_needs_a_natural_partitioner(tmp_path):
    path = _users_dataset(tmp_path, with_test=True)
    bundle = load_dataset("hf:users", seed=0, num_clients=0, path=path, partition_by="user")
    with pytest.raises(ConfigError, match="data.num_clients = 0 .* needs a partitioner of natural clients"):
        partition_dataset(bundle.train, "iid", num_clients=0, seed=0)


def test_leaf_characters_and_the_unknown_id():
    assert len(LEAF_CHARACTERS) == 80 and CHARACTER_VOCAB == 81
    ids = encode_characters(["\n !a", "z}~é"], 4)
    assert ids.tolist() == [[0, 1, 2, LEAF_CHARACTERS.index("a")], [78, 79, 80, 80]]
    with pytest.raises(ConfigError, match="every text must have 4 characters"):
        encode_characters(["abc"], 4)


def test_word_vocabulary_keeps_the_most_frequent_words_and_left_pads():
    tokenizer = word_vocabulary(["Love love LOVE it", "hate it", "meh"], size=2)
    vocab = tokenizer.get_vocab()
    assert vocab["[PAD]"] == 0 and vocab["[UNK]"] == 1 and {"love", "it"} <= set(vocab) and len(vocab) == 4
    ids = encode_words(tokenizer, ["love it", "hate", "it love it love it"], 3)
    love, it = vocab["love"], vocab["it"]
    assert ids.tolist() == [[0, love, it], [0, 0, 1], [it, love, it]]  # left-padded, [UNK], cut at 3
