"""The standard federated benchmarks, loaded from their Hugging Face hub copies (the ones Flower
Datasets uses) or from a local copy in the same schema (``data.path``, a ``save_to_disk``
directory). Each keeps the hub's column names and applies its source's preprocessing:

| dataset | hub copy | natural client | task | preprocessing |
|---|---|---|---|---|
| femnist | flwrlabs/femnist | writer_id | 62 classes | LEAF: greyscale 28x28 scaled to [0, 1] |
| shakespeare | flwrlabs/shakespeare | character_id | next character | LEAF's 80 characters; the target of each of the 80 positions is the next character (x[1:] + y) |
| sent140 | stanfordnlp/sentiment140 | user | 2 classes | LEAF: sentiment 0 / 4 -> 0 / 1, first `sequence_length` (25) words, lowercased word vocabulary of the training text |
| cifar10, cifar100 | uoft-cs/cifar10, uoft-cs/cifar100 | none (Dirichlet) | 10 / 100 classes (`fine_label`) | per-channel standardisation by the training split's mean and std |

FEMNIST, Shakespeare and Sent140 have no test split of their own: like LEAF, each client's
samples are split into its training and test samples (``test_fraction``; Shakespeare's
temporally, `fedsim.data.natural`), and a seeded ``client_fraction`` of the clients is kept.
Sent140's hub test split (498 hand-labelled tweets, some neutral) is not used, as in LEAF.
Data augmentation (the crops and flips of the CIFAR papers) is not applied.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from fedsim.config import DataConfig
from fedsim.data.datasets import (
    Dataset,
    DatasetBundle,
    column_values,
    features_and_labels,
    hub_splits,
    require_columns,
)
from fedsim.errors import ConfigError

if TYPE_CHECKING:
    import datasets

    from fedsim.data.natural import NaturalSplit


class NaturalBenchmark(Dataset):
    """A hub dataset whose samples belong to natural clients, split per client as LEAF does."""

    hub: ClassVar[str]
    natural: ClassVar[str]  # the column naming each sample's client
    columns: ClassVar[dict[str, str]]  # column -> kind the task needs (see `require_columns`)
    temporal_gap: ClassVar[int] = -1  # >= 0: overlapping windows, split in time with this gap

    def load(self, data: DataConfig, seed: int) -> DatasetBundle:
        from fedsim.data.natural import natural_split

        name = data.dataset
        train = hub_splits(name, self.hub, data.path)["train"]
        by = data.partition_by or self.natural
        require_columns(train, name, {**self.columns, by: "any"})
        split = natural_split(
            column_values(train, by),
            data.client_fraction, data.test_fraction, seed, self.temporal_gap,
        )
        return self.encode(train, split, data)

    def encode(self, train: datasets.Dataset, split: NaturalSplit, data: DataConfig) -> DatasetBundle:
        """The bundle of `split`'s rows of `train`. Columns are read whole and indexed in numpy:
        reading them through `select`'s index mapping is ~100x slower for image columns."""
        raise NotImplementedError


class FEMNIST(NaturalBenchmark):
    """LEAF FEMNIST: 28x28 handwritten digits and letters (62 classes) split by writer (flwrlabs/femnist).

    Caldas et al., LEAF: A Benchmark for Federated Settings (2018).
    """

    hub = "flwrlabs/femnist"
    natural = "writer_id"
    columns = {"image": "image", "character": "class"}

    def encode(self, train, split, data):
        x, y = features_and_labels(train, "image", "character", data.dataset)
        num_classes = train.features["character"].num_classes
        return DatasetBundle.from_arrays(data.dataset, *split.rows(x, y), num_classes, split.train_clients)


class Shakespeare(NaturalBenchmark):
    """LEAF Shakespeare: next-character prediction over 80-character lines, split by speaking role
    (flwrlabs/shakespeare).

    Caldas et al. 2018 (LEAF), McMahan et al. 2017 (FedAvg); each position's target is the next
    character, as in TensorFlow Federated's version.
    """

    hub = "flwrlabs/shakespeare"
    natural = "character_id"
    columns = {"x": "string", "y": "string"}
    window: ClassVar[int] = 80
    temporal_gap = window - 1  # LEAF's split_data.py: test windows start past the last training target

    def encode(self, train, split, data):
        from fedsim.data.text import CHARACTER_VOCAB, encode_characters

        inputs = encode_characters(list(train["x"]), self.window)
        following = encode_characters(list(train["y"]), 1)
        targets = np.concatenate([inputs[:, 1:], following], axis=1)  # the next character at every position
        return DatasetBundle.from_arrays(
            data.dataset, *split.rows(inputs, targets), CHARACTER_VOCAB, split.train_clients, vocab_size=CHARACTER_VOCAB
        )


class Sent140(NaturalBenchmark):
    """Sentiment140 tweets, positive or negative, split by user (stanfordnlp/sentiment140).

    Go et al. 2009; LEAF's Sent140 (Caldas et al. 2018): labels 0 and 4 become 0 and 1, each tweet
    its first `data.sequence_length` (LEAF: 25) words, left-padded.
    """

    hub = "stanfordnlp/sentiment140"
    natural = "user"
    columns = {"text": "string", "sentiment": "integer"}

    def encode(self, train, split, data):
        from fedsim.data.text import encode_words, word_vocabulary

        texts = np.asarray(train["text"], dtype=object)
        tokenizer = word_vocabulary(texts[split.train].tolist(), data.vocabulary)  # the training text only
        ids = encode_words(tokenizer, texts.tolist(), data.sequence_length)
        labels = self.labels(train, data.dataset)
        vocab = tokenizer.get_vocab_size()
        return DatasetBundle.from_arrays(data.dataset, *split.rows(ids, labels), 2, split.train_clients, vocab_size=vocab)

    @staticmethod
    def labels(part: datasets.Dataset, name: str) -> np.ndarray:
        sentiment = np.asarray(part["sentiment"], dtype=np.int64)
        if not np.isin(sentiment, (0, 4)).all():
            found = ", ".join(map(str, np.unique(sentiment)))
            raise ConfigError(f"dataset {name!r}: column 'sentiment' must hold 0 or 4 in train, found {found}")
        return sentiment // 4


class CIFAR(Dataset):
    """CIFAR 32x32 colour images, standardised per channel by the training split's mean and std."""

    hub: ClassVar[str]
    label: ClassVar[str]

    def load(self, data: DataConfig, seed: int) -> DatasetBundle:
        name = data.dataset
        splits = hub_splits(name, self.hub, data.path)
        for split in ("train", "test"):
            if split not in splits:
                raise ConfigError(f"dataset {name!r} has no {split!r} split (splits: {', '.join(splits)})")
            require_columns(splits[split], name, {"img": "image", self.label: "class"})
        x_tr, y_tr = features_and_labels(splits["train"], "img", self.label, name)
        x_te, y_te = features_and_labels(splits["test"], "img", self.label, name)
        mean = x_tr.mean(axis=(0, 2, 3), keepdims=True, dtype=np.float64)
        std = x_tr.std(axis=(0, 2, 3), keepdims=True, dtype=np.float64)
        x_tr, x_te = (((x - mean) / std).astype(np.float32) for x in (x_tr, x_te))
        num_classes = splits["train"].features[self.label].num_classes
        return DatasetBundle.from_arrays(name, (x_tr, y_tr), (x_te, y_te), num_classes)


class CIFAR10(CIFAR):
    """CIFAR-10: 50,000 + 10,000 32x32 colour images, 10 classes (uoft-cs/cifar10). Krizhevsky 2009."""

    hub = "uoft-cs/cifar10"
    label = "label"


class CIFAR100(CIFAR):
    """CIFAR-100: 50,000 + 10,000 32x32 colour images, 100 fine classes (uoft-cs/cifar100). Krizhevsky 2009."""

    hub = "uoft-cs/cifar100"
    label = "fine_label"
