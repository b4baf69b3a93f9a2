"""Datasets fedsim can train on, each loaded into memory as a train/test pair of HF Datasets.

A dataset is a subclass of `Dataset` whose ``load(data, seed) -> DatasetBundle`` reads what it
needs from the `[data]` section (``test_fraction``, ``samples``, ...) and draws every split and
generator from ``seed``. Register it in the `fedsim.datasets` entry-point group, or name it as
``data.dataset = "package.module:Class"`` / ``"path/to/file.py:Class"``; the built-ins below
register the same way. A class with ``argument`` set takes text after its registered name
(``hf:<name>``), which it reads from ``data.dataset``.

Every dataset is converted to the same two columns, ``x`` (float32 features shaped as
``input_shape``, or int64 token ids in [0, ``vocab_size``) for a text dataset) and ``label``
(int64: a class per sample, or per position for next-token prediction, `fedsim.loss`), so
models, partitioners and backends never special-case a dataset. A dataset with natural clients
(writers, speaking roles, users) adds their ids as ``client_id`` (`fedsim.data.natural`).
Hugging Face datasets (1.5 s) and torch (2.5 s) are imported when a dataset is built or its
tensors are made, not with this module, so `fedsim list` and `fedsim.data` stay light.
"""

from __future__ import annotations

import functools
import math
import os
import random
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fedsim import seeding
from fedsim.config import DataConfig, build_section
from fedsim.errors import ConfigError, DatasetUnavailable
from fedsim.plugins import make

if TYPE_CHECKING:
    import datasets
    import torch

FEATURE_COLUMNS = ("img", "image", "x", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "fine_label", "y")
HUB_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class DatasetInfo:
    """What a generated population's data looks like (the metadata of a `DatasetBundle`)."""

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    vocab_size: int = 0
    label_shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class DatasetBundle:
    """A dataset ready for federated training: train and test splits plus their shape metadata."""

    name: str
    train: datasets.Dataset
    test: datasets.Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    vocab_size: int = 0  # > 0: x holds token ids in [0, vocab_size) (a model with inputs = "tokens")
    label_shape: tuple[int, ...] = ()  # (positions,) for a target per position
    _tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def from_arrays(
        cls,
        name: str,
        train: tuple[np.ndarray, np.ndarray],
        test: tuple[np.ndarray, np.ndarray],
        num_classes: int,
        client_ids: np.ndarray | None = None,
        vocab_size: int = 0,
    ) -> DatasetBundle:
        """A bundle of numpy (x, y) pairs, x shaped [n, *input_shape] (token ids when `vocab_size`
        > 0), y [n] or [n, positions]; `client_ids` adds the `client_id` column a natural split
        reads. What a dataset plugin's `load` returns."""
        train_ds = _to_dataset(*train, client_ids=client_ids, tokens=vocab_size > 0)
        test_ds = _to_dataset(*test, tokens=vocab_size > 0)
        return cls(name, train_ds, test_ds, num_classes, tuple(train[0].shape[1:]), vocab_size, tuple(train[1].shape[1:]))

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(x [n, *input_shape] float32, or int64 token ids; y int64 [n] or [n, positions]) of
        "train" or "test", converted once and cached."""
        if split not in ("train", "test"):
            raise ConfigError(f"unknown split {split!r}: use 'train' or 'test'")
        if split not in self._tensors:
            import torch

            cols = numpy_columns(getattr(self, split), "x", "label")
            x = torch.from_numpy(np.ascontiguousarray(cols["x"], dtype=np.int64 if self.vocab_size else np.float32))
            y = torch.from_numpy(np.ascontiguousarray(cols["label"], dtype=np.int64))
            self._tensors[split] = (x.reshape(len(y), *self.input_shape), y.reshape(len(y), *self.label_shape))
        return self._tensors[split]


def numpy_columns(dataset: datasets.Dataset, *names: str) -> dict[str, np.ndarray]:
    """The named columns as numpy arrays in their stored dtypes, read in one batch.

    (``dataset[name]`` is a slow lazy Column.) ``dtype=None`` keeps datasets' numpy format from
    widening integer columns to int64, which holds uint8 images in 8x their memory.
    """
    return dataset.select_columns(list(names)).with_format("numpy", dtype=None)[:]


class Dataset:
    """The dataset interface: `load` returns the train and test splits, seeded by `seed`.

    A dataset that generates its clients instead (`generates_clients = True`: LEAF Synthetic)
    gives `client_sizes` (every client's sample count, in one vectorised draw), `client_data`
    (one client's samples from (seed, client id), without making the others) and `info`; the
    federation then materialises a client only when a round or an evaluation needs it
    (`fedsim.population`), so its population can be millions.
    """

    argument: ClassVar[str] = ""  # what the text after `name:` is (a hub dataset's name); "" = none
    generates_clients: ClassVar[bool] = False

    def load(self, data: DataConfig, seed: int) -> DatasetBundle:
        raise NotImplementedError

    def client_sizes(self, data: DataConfig, seed: int) -> np.ndarray:
        """Generated populations: the sample count of each of the `data.num_clients` clients."""
        raise NotImplementedError

    def client_data(self, data: DataConfig, seed: int, client_id: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Generated populations: client `client_id`'s `size` samples (x, y), drawn from (seed, client id)."""
        raise NotImplementedError

    def info(self, data: DataConfig) -> DatasetInfo:
        """Generated populations: what their data looks like (classes, input shape)."""
        raise NotImplementedError


def load_dataset(name: str, *, seed: int, **data: Any) -> DatasetBundle:
    """Load dataset ``name`` (a registered name, ``hf:<hub name>`` or a class path) in memory.

    ``data`` holds `[data]` keys (``num_clients``, ``path``, ``test_fraction``, ``samples``,
    ``synthetic_alpha``, ``synthetic_beta``; the rest keep their defaults), checked by the schema.
    """
    section = build_section(DataConfig, {**data, "dataset": name}, "data.")
    return make("dataset", name).load(section, seed)


def _to_dataset(
    x: np.ndarray, y: np.ndarray, client_ids: np.ndarray | None = None, tokens: bool = False
) -> datasets.Dataset:
    """Build an in-memory Dataset; arrays go in as Arrow arrays, which is ~7x faster than from numpy."""
    import datasets

    columns, features = {}, {}
    for name, values, dtype in (("x", x, "int64" if tokens else "float32"), ("label", y, "int64")):
        columns[name], features[name] = _arrow_column(np.ascontiguousarray(values, dtype=dtype), name)
    if client_ids is not None:
        columns["client_id"] = np.asarray(client_ids, dtype=np.int64)
        features["client_id"] = datasets.Value("int64")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def _arrow_column(values: np.ndarray, name: str) -> tuple[Any, Any]:
    """(Arrow storage, datasets feature) of an [n, *shape] array: a scalar per row, or the row
    flattened into a fixed-length list (the bundle keeps the shape), which wraps numpy's buffer
    without a copy; `DatasetBundle.tensors` reshapes it."""
    import datasets
    import pyarrow as pa

    if values.ndim == 1:
        return values, datasets.Value(str(values.dtype))
    flat = values.reshape(len(values), -1)
    storage = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1])
    return storage, datasets.List(datasets.Value(str(values.dtype)), length=flat.shape[1])


class Digits(Dataset):
    """scikit-learn handwritten digits: 1797 8x8 greyscale images, 10 classes (bundled, offline).

    Scaled to [0, 1], split stratified by label as scikit-learn's ``train_test_split(stratify=y,
    random_state=seed)`` splits it (`stratified_split`). Read from the package's data file, without
    importing scikit-learn (2.5 s with scipy).
    """

    def load(self, data: DataConfig, seed: int) -> DatasetBundle:
        import gzip
        import importlib.util

        [package] = importlib.util.find_spec("sklearn").submodule_search_locations
        with gzip.open(os.path.join(package, "datasets", "data", "digits.csv.gz"), "rt") as f:
            table = np.loadtxt(f, delimiter=",")
        x, y = (table[:, :-1] / 16.0).reshape(-1, 1, 8, 8), table[:, -1].astype(np.int64)
        train, test = stratified_split(y, data.test_fraction, seed)
        return DatasetBundle.from_arrays("digits", (x[train], y[train]), (x[test], y[test]), 10)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows): scikit-learn's stratified shuffle split, draw for draw, so digits
    keeps the split it always had (`tests/test_datasets.py` compares it with scikit-learn's).

    ceil(test_fraction * n) test rows; each class gets its share of the train and then of the test
    rows, rounded down, the remaining rows going to the largest remainders (ties drawn at random);
    the rows of a class are permuted, its train rows taken first; both sets are shuffled. Every
    draw comes from one `np.random.RandomState(seed)`, in scikit-learn's order.
    """
    n = len(labels)
    n_test = math.ceil(test_fraction * n)
    n_train = n - n_test
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)

    def shares(population: np.ndarray, draws: int) -> np.ndarray:
        exact = population / population.sum() * draws
        share = np.floor(exact)
        missing = int(draws - share.sum())
        remainder = exact - share
        for value in np.sort(np.unique(remainder))[::-1]:
            if missing <= 0:
                break
            [tied] = np.where(remainder == value)
            chosen = rng.choice(tied, size=min(len(tied), missing), replace=False)
            share[chosen] += 1
            missing -= len(chosen)
        return share.astype(int)

    train_share = shares(counts, n_train)
    test_share = shares(counts - train_share, n_test)
    train, test = [], []
    for rows, k, t in zip(members, train_share, test_share):
        shuffled = rows.take(rng.permutation(len(rows)), mode="clip")
        train.extend(shuffled[:k])
        test.extend(shuffled[k : k + t])
    return rng.permutation(train), rng.permutation(test)


class MNIST1D(Dataset):
    """MNIST-1D: 1D signals of length 40, 10 classes, generated locally (samples= sets the size).

    ``samples`` (default 5000) is rounded down to a multiple of 10 by the package.
    """

    def load(self, data: DataConfig, seed: int) -> DatasetBundle:
        if 0 < data.samples < 10:
            raise ConfigError(f"mnist1d needs data.samples >= 10 (one per class), got {data.samples}")
        x_tr, y_tr, x_te, y_te = _mnist1d_arrays(seed, data.test_fraction, data.samples or 5000)
        return DatasetBundle.from_arrays("mnist1d", (x_tr[:, None, :], y_tr), (x_te[:, None, :], y_te), 10)


@functools.lru_cache(maxsize=8)
def _mnist1d_arrays(seed: int, test_fraction: float, samples: int) -> tuple[np.ndarray, ...]:
    """Run mnist1d's generator (make_dataset never downloads or caches to disk, unlike get_dataset).

    The package seeds the global ``random``/``np.random`` state, so that state is restored afterwards.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = samples, seed, 1.0 - test_fraction
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    arrays = tuple(np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test"))
    for a in arrays:
        a.flags.writeable = False
    return arrays


class Synthetic(Dataset):
    """LEAF Synthetic(alpha, beta): 60 features, 10 classes, a population of generated clients.

    Li et al. (FedProx): each client has its own softmax-regression model.
    Client k: u_k ~ N(0, alpha), W_k, b_k ~ N(u_k, 1); B_k ~ N(0, beta), v_k ~ N(B_k, 1);
    x ~ N(v_k, diag(j^-1.2)); y = argmax(W_k x + b_k) (argmax of the softmax). Client sizes follow
    LEAF's lognormal(4, 2) + 50 but are capped at 250 so one client cannot dominate (mean ~140
    samples per client); with ``samples`` > 0 they are rescaled to about that total. Every client
    keeps at least 2 samples; ``test_fraction`` of each client's samples (at least one stays in
    train) go to the central test set (of ``test_clients`` seeded clients). ``alpha`` and ``beta``
    are ``synthetic_alpha`` and ``synthetic_beta``. Client k is drawn from (seed, k) alone, so any
    client of a population of ``num_clients`` is made without making the others.
    """

    generates_clients = True
    DIM, CLASSES = 60, 10

    def client_sizes(self, data: DataConfig, seed: int) -> np.ndarray:
        rng = seeding.numpy_rng(seed, "synthetic_sizes")
        sizes = np.minimum(rng.lognormal(4.0, 2.0, data.num_clients) + 50, 250)
        if data.samples:
            sizes *= data.samples / sizes.sum()
        return np.maximum(np.rint(sizes), 2).astype(np.int64)

    def client_data(self, data: DataConfig, seed: int, client_id: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        rng = seeding.numpy_rng(seed, "synthetic", client_id)
        dim, classes = self.DIM, self.CLASSES
        u, big_b = rng.normal(0.0, data.synthetic_alpha), rng.normal(0.0, data.synthetic_beta)
        w = rng.normal(u, 1.0, (dim, classes))
        b = rng.normal(u, 1.0, classes)
        v = rng.normal(big_b, 1.0, dim)
        x = v + np.arange(1, dim + 1) ** -0.6 * rng.standard_normal((size, dim))  # std: sqrt of j^-1.2
        return x.astype(np.float32), np.argmax(x @ w + b, axis=1)

    def info(self, data: DataConfig) -> DatasetInfo:
        return DatasetInfo("synthetic", self.CLASSES, (self.DIM,))


class HubDataset(Dataset):
    """A Hugging Face dataset with an image/feature and a label column (data.path= for a local copy).

    Loaded from ``data.path`` (a save_to_disk directory or a load_dataset source) when given,
    else from the hub; without a test split, ``test_fraction`` of train is held out (seeded,
    stratified when the label is a ClassLabel). ``data.partition_by`` names a column whose values
    are natural clients (`fedsim.data.natural`); then a dataset without a test split is split per
    client, as LEAF does.
    """

    argument: ClassVar[str] = "name"

    def load(self, data: DataConfig, seed: int) -> DatasetBundle:
        return _hub(data, seed)


def _hub(data: DataConfig, seed: int) -> DatasetBundle:
    import datasets

    from fedsim.data import natural

    name = data.dataset
    raw = hub_splits(name, name[3:], data.path)
    if "train" not in raw:
        raise ConfigError(f"dataset {name!r} has no 'train' split (splits: {', '.join(raw)})")
    train = raw["train"]
    x_col, y_col = _pick_columns(train, name)
    label_feature = train.features[y_col]
    if data.partition_by:
        values = column_values(train, natural.natural_column(train.column_names, data.partition_by, name))
        x, y = features_and_labels(train, x_col, y_col, name)  # read whole, indexed in numpy (see NaturalSplit)
        num_classes = _num_classes(label_feature, y)
        if "test" not in raw:
            split = natural.natural_split(values, data.client_fraction, data.test_fraction, seed)
            return DatasetBundle.from_arrays(name, *split.rows(x, y), num_classes, split.train_clients)
        rows, clients = natural.client_rows(values, data.client_fraction, seed)
        test = features_and_labels(raw["test"], x_col, y_col, name)
        return DatasetBundle.from_arrays(name, (x[rows], y[rows]), test, max(num_classes, _num_classes(label_feature, test[1])), clients)
    if "test" not in raw:
        stratify = y_col if isinstance(train.features[y_col], datasets.ClassLabel) else None
        raw = train.train_test_split(test_size=data.test_fraction, seed=seed, stratify_by_column=stratify)
        train = raw["train"]
    test = raw["test"]
    x_tr, y_tr = features_and_labels(train, x_col, y_col, name)
    x_te, y_te = features_and_labels(test, x_col, y_col, name)
    num_classes = max(_num_classes(label_feature, y_tr), _num_classes(label_feature, y_te))
    return DatasetBundle.from_arrays(name, (x_tr, y_tr), (x_te, y_te), num_classes)


def _num_classes(label_feature: Any, labels: np.ndarray) -> int:
    """A ClassLabel's class count, else one more than the largest label."""
    import datasets

    if isinstance(label_feature, datasets.ClassLabel):
        return label_feature.num_classes
    return int(labels.max(initial=0)) + 1


def column_values(ds: datasets.Dataset, name: str) -> np.ndarray:
    """One column's values as a numpy array (strings as objects), straight from Arrow."""
    return np.asarray(ds.data.column(name).to_numpy(zero_copy_only=False))


def hub_splits(name: str, hub_name: str, path: str) -> datasets.DatasetDict:
    """The splits of dataset `name`: from `path` when given, else hub dataset `hub_name`."""
    import datasets

    raw = _load_raw(name, hub_name, path)
    return datasets.DatasetDict(train=raw) if isinstance(raw, datasets.Dataset) else raw


def _load_raw(name: str, hub_name: str, path: str) -> datasets.Dataset | datasets.DatasetDict:
    """Load from ``path`` when given, else from the hub, failing fast with one line when offline."""
    import datasets

    if path:
        try:
            if os.path.isdir(path) and any(
                os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json")
            ):
                return datasets.load_from_disk(path)
            with tempfile.TemporaryDirectory() as cache:  # keep datasets' Arrow cache out of the user's home
                return datasets.load_dataset(path, cache_dir=cache, keep_in_memory=True)
        except (OSError, ValueError) as err:
            raise DatasetUnavailable(
                f"cannot load dataset {name!r} from {path!r}: {_first_line(err)}"
            ) from err
    hint = "save it once with datasets' save_to_disk and set data.path=/path/to/copy"
    if not datasets.config.HF_HUB_OFFLINE and not _hub_reachable():
        raise DatasetUnavailable(
            f"cannot load dataset {name!r} from the Hugging Face hub (offline?): {hint} "
            "(or set HF_HUB_OFFLINE=1 to use the local hub cache)"
        )
    try:
        return datasets.load_dataset(hub_name)
    except (OSError, ValueError) as err:  # ConnectionError, DatasetNotFoundError, bad config name
        raise DatasetUnavailable(
            f"cannot load dataset {name!r} from the Hugging Face hub ({_first_line(err)}): {hint}"
        ) from err


def _hub_reachable() -> bool:
    """One short request to the hub endpoint: datasets itself retries for ~20 s before giving up."""
    import httpx
    import huggingface_hub
    from huggingface_hub import constants as hub_constants

    try:
        huggingface_hub.get_session().head(hub_constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_S)
    except (httpx.HTTPError, OSError):  # DNS failure, refused, timeout, proxy error, offline mode
        return False
    return True


def _first_line(err: BaseException) -> str:
    """The first line of an exception message, so a DatasetUnavailable stays one line."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def _pick_columns(ds: datasets.Dataset, name: str) -> tuple[str, str]:
    """(feature column, label column) by the usual names, or the single non-label column."""
    label_col = next((c for c in LABEL_COLUMNS if c in ds.column_names), None)
    if label_col is None:
        raise ConfigError(
            f"dataset {name!r} has no label column ({', '.join(LABEL_COLUMNS)}); columns: {ds.column_names}"
        )
    x_col = next((c for c in FEATURE_COLUMNS if c in ds.column_names), None)
    others = [c for c in ds.column_names if c != label_col]
    if x_col is None and len(others) == 1:
        x_col = others[0]
    if x_col is None:
        raise ConfigError(
            f"dataset {name!r} has no feature column ({', '.join(FEATURE_COLUMNS)}); columns: {ds.column_names}"
        )
    return x_col, label_col


def features_and_labels(
    ds: datasets.Dataset, x_col: str, y_col: str, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Decode a split to (x float32 channels-first, y int64); integer pixels are scaled to [0, 1]."""
    cols = numpy_columns(ds, x_col, y_col)
    x, y = cols[x_col], np.asarray(cols[y_col], dtype=np.int64)
    if x.dtype == object:
        raise ConfigError(f"dataset {name!r}: samples in column {x_col!r} differ in shape; resize them first")
    scale = 255.0 if np.issubdtype(x.dtype, np.integer) else 1.0
    x = x.astype(np.float32)
    x /= np.float32(scale)  # in place: a dataset of 800k images is 2.5 GB as float32
    if x.ndim == 3:  # (n, H, W) greyscale
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] <= 4 < x.shape[1]:  # (n, H, W, C) -> (n, C, H, W)
        x = x.transpose(0, 3, 1, 2)
    return x, y


COLUMN_KINDS = {  # what `require_columns` accepts for each kind of column
    "image": "an image (datasets.Image or an array of pixels)",
    "class": "class labels (datasets.ClassLabel)",
    "integer": "integers",
    "string": "strings",
    "any": "any values",
}


def require_columns(ds: datasets.Dataset, name: str, columns: dict[str, str]) -> None:
    """One ConfigError line, naming the columns found, unless `ds` has each column with its kind."""
    import datasets

    found = ", ".join(f"{c} ({_kind(f)})" for c, f in ds.features.items())
    for column, kind in columns.items():
        if column not in ds.features:
            raise ConfigError(f"dataset {name!r} has no column {column!r}; columns: {found}")
        feature = ds.features[column]
        ok = {
            "image": isinstance(feature, (datasets.Image, datasets.Array2D, datasets.Array3D)),
            "class": isinstance(feature, datasets.ClassLabel),
            "integer": isinstance(feature, (datasets.ClassLabel, datasets.Value)) and _kind(feature).startswith("int"),
            "string": isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"),
            "any": True,
        }[kind]
        if not ok:
            raise ConfigError(
                f"dataset {name!r}: column {column!r} must hold {COLUMN_KINDS[kind]}, not {_kind(feature)}; columns: {found}"
            )


def _kind(feature: Any) -> str:
    """A feature's type in a few words: its dtype, ClassLabel, Image or its class name."""
    dtype = getattr(feature, "dtype", None)
    if type(feature).__name__ == "Value" and dtype:
        return str(dtype)
    if type(feature).__name__ == "ClassLabel":
        return "int64 class label"
    return type(feature).__name__
