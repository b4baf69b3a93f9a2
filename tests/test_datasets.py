"""Dataset loading: shapes, ranges, determinism, local Hugging Face copies and the offline failure."""

from __future__ import annotations

import time

import datasets
import huggingface_hub.constants
import numpy as np
import pytest
import torch

from fedsim.config import DataConfig
from fedsim.data import load_dataset, numpy_columns
from fedsim.data.datasets import Synthetic
from fedsim.errors import ConfigError, DatasetUnavailable
from fedsim.plugins import available


def test_digits_shapes_range_and_stratified_split():
    bundle = load_dataset("digits", seed=0, num_clients=10)
    x, y = bundle.tensors("train")
    x_test, y_test = bundle.tensors("test")
    assert bundle.input_shape == (1, 8, 8) and bundle.num_classes == 10
    assert x.shape == (1437, 1, 8, 8) and x_test.shape == (360, 1, 8, 8)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert set(np.bincount(y_test.numpy())) <= {35, 36, 37}  # stratified: ~36 of each class


def test_digits_seed_fixes_the_split():
    a, b, c = (load_dataset("digits", seed=s, num_clients=1).tensors("test")[0] for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_tensors_are_converted_once():
    bundle = load_dataset("digits", seed=0, num_clients=1)
    assert bundle.tensors("train")[0] is bundle.tensors("train")[0]
    with pytest.raises(ConfigError):
        bundle.tensors("validation")


def test_mnist1d_is_generated_locally_and_deterministically(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    bundle = load_dataset("mnist1d", seed=3, num_clients=10)
    x, y = bundle.tensors("train")
    assert bundle.input_shape == (1, 40) and bundle.num_classes == 10
    assert x.shape == (4000, 1, 40) and bundle.tensors("test")[0].shape == (1000, 1, 40)
    assert set(y.unique().tolist()) == set(range(10))
    assert list(tmp_path.iterdir()) == []  # no cache pickle in the working directory
    assert np.array_equal(np.random.get_state()[1], before)  # global RNG left as it was
    again = load_dataset("mnist1d", seed=3, num_clients=10).tensors("train")[0]
    other = load_dataset("mnist1d", seed=4, num_clients=10).tensors("train")[0]
    assert torch.equal(x, again) and not torch.equal(x, other)


def test_mnist1d_samples_and_test_fraction():
    bundle = load_dataset("mnist1d", seed=0, num_clients=1, samples=1000, test_fraction=0.3)
    assert (len(bundle.train), len(bundle.test)) == (700, 300)


def test_synthetic_makes_any_client_alone_from_the_seed_and_its_id():
    synthetic, data = Synthetic(), DataConfig(dataset="synthetic", num_clients=10_000_000)
    sizes = synthetic.client_sizes(data, seed=0)
    assert len(sizes) == 10_000_000 and sizes.min() >= 50 and sizes.max() <= 250
    x, y = synthetic.client_data(data, 0, 9_999_999, int(sizes[-1]))
    assert x.shape == (sizes[-1], 60) and x.dtype == np.float32 and 0 <= y.min() <= y.max() <= 9
    again = synthetic.client_data(DataConfig(num_clients=30), 0, 9_999_999, int(sizes[-1]))
    assert np.array_equal(x, again[0]) and np.array_equal(y, again[1])  # the population's size does not matter
    other = synthetic.client_data(data, 1, 9_999_999, int(sizes[-1]))
    assert not np.array_equal(x, other[0])


def test_synthetic_samples_rescale_the_sizes():
    sizes = Synthetic().client_sizes(DataConfig(num_clients=20, samples=2000), seed=5)
    assert abs(sizes.sum() - 2000) < 50 and sizes.min() >= 2


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'; choose one of: (.*, )?digits, .*hf:<name>, mnist1d"):
        load_dataset("cifar", seed=0, num_clients=1)
    builtins = {"digits", "mnist1d", "synthetic", "hf:<name>", "femnist", "shakespeare", "sent140", "cifar10", "cifar100"}
    assert builtins <= set(available("dataset"))  # plugins may add more


@pytest.mark.parametrize(
    "name, message",
    [("hf", "needs its name after a colon: data.dataset=hf:<name>"), ("digits:x", "takes no ':' argument")],
)
def test_registered_names_and_their_arguments(name, message):
    with pytest.raises(ConfigError, match=message):
        load_dataset(name, seed=0, num_clients=1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"test_fraction": 0.0}, r"data.test_fraction must be in \(0, 1\), got 0.0"),
        ({"test_fraction": 1.0}, r"data.test_fraction must be in \(0, 1\), got 1.0"),
        ({"samples": -1}, "data.samples must be >= 0, got -1"),
        ({"synthetic_alpha": -1}, "data.synthetic_alpha must be >= 0"),
        ({"test_fractoin": 0.1}, "did you mean 'data.test_fraction'"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        load_dataset("digits", seed=0, num_clients=1, **kwargs)


def _images(rng, n, shape):
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def test_hf_dataset_dict_from_disk(tmp_path):
    rng = np.random.default_rng(0)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])}
    )
    splits = {
        split: datasets.Dataset.from_dict(
            {"image": _images(rng, n, (28, 28)), "label": rng.integers(0, 3, n)}, features=features
        )
        for split, n in (("train", 40), ("test", 12))
    }
    datasets.DatasetDict(splits).save_to_disk(tmp_path / "toy")
    bundle = load_dataset("hf:toy", seed=0, num_clients=2, path=str(tmp_path / "toy"))
    x, y = bundle.tensors("train")
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 3
    assert x.shape == (40, 1, 28, 28) and len(bundle.test) == 12
    first = np.asarray(splits["train"][0]["image"], dtype=np.float32) / 255
    assert np.allclose(x[0, 0].numpy(), first) and 0.0 <= x.min() and x.max() <= 1.0
    assert y.tolist() == splits["train"]["label"][:]


def test_hf_train_only_rgb_is_split_and_channels_first(tmp_path):
    rng = np.random.default_rng(1)
    train = datasets.Dataset.from_dict(
        {"img": _images(rng, 50, (32, 32, 3)), "fine_label": rng.integers(0, 7, 50)},
        features=datasets.Features({"img": datasets.Image(), "fine_label": datasets.Value("int64")}),
    )
    train.save_to_disk(tmp_path / "rgb")
    bundle = load_dataset("hf:rgb", seed=0, num_clients=2, path=str(tmp_path / "rgb"), test_fraction=0.2)
    assert bundle.input_shape == (3, 32, 32)
    assert (len(bundle.train), len(bundle.test)) == (40, 10)
    assert bundle.num_classes == int(np.max(train["fine_label"][:])) + 1


def test_hf_directory_of_data_files(tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "files").mkdir()
    for split, n in (("train", 30), ("test", 10)):
        ds = datasets.Dataset.from_dict({"pixels": rng.random((n, 5)).tolist(), "y": rng.integers(0, 4, n)})
        ds.to_parquet(tmp_path / "files" / f"{split}.parquet")
    bundle = load_dataset("hf:tab", seed=0, num_clients=2, path=str(tmp_path / "files"))
    assert bundle.input_shape == (5,) and (len(bundle.train), len(bundle.test)) == (30, 10)


def test_hf_offline_failure_is_one_fast_line(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Both libraries read these variables at import time, so flip their flags too.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailable) as err:
        load_dataset("hf:fedsim-tests/no-such-dataset", seed=0, num_clients=2)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "\n" not in message
    assert "'hf:fedsim-tests/no-such-dataset'" in message and "data.path=" in message


def test_hf_missing_local_path(tmp_path):
    with pytest.raises(DatasetUnavailable, match="missing"):
        load_dataset("hf:toy", seed=0, num_clients=2, path=str(tmp_path / "missing"))


def test_hf_array_images_are_read_as_stored_uint8_and_scaled(tmp_path):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    features = datasets.Features(
        {"img": datasets.Array3D((8, 8, 3), "uint8"), "label": datasets.Value("int64")}
    )
    train = datasets.Dataset.from_dict({"img": pixels, "label": rng.integers(0, 2, 20)}, features=features)
    assert numpy_columns(train, "img")["img"].dtype == np.uint8  # not widened to int64
    train.save_to_disk(tmp_path / "arr")
    bundle = load_dataset("hf:arr", seed=0, num_clients=2, path=str(tmp_path / "arr"), test_fraction=0.25)
    x, _ = bundle.tensors("train")
    assert x.shape == (15, 3, 8, 8) and x.dtype == torch.float32
    stored = {tuple(p.flatten()) for p in pixels.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)}
    assert {tuple(row.flatten().tolist()) for row in x.numpy()} <= stored


@pytest.mark.parametrize("seed", [0, 1, 7, 123])
@pytest.mark.parametrize("test_fraction", [0.2, 0.25, 0.5, 0.1])
def test_digits_split_is_scikit_learns_stratified_split(seed, test_fraction):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        digits.data / 16.0, digits.target, test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    bundle = load_dataset("digits", seed=seed, num_clients=1, test_fraction=test_fraction)
    for split, (x, y) in (("train", (x_tr, y_tr)), ("test", (x_te, y_te))):
        ours_x, ours_y = bundle.tensors(split)
        assert np.array_equal(ours_y.numpy(), y) and np.array_equal(ours_x.numpy().reshape(len(y), -1), x.astype(np.float32))
