"""The local benchmark copies: the hub's exact schemas, their value ranges, seeding and learnability.

The expected features are written out here from the hub datasets' cards, not taken from the
module, so a change to a writer's schema fails here rather than in a loader later.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import datasets
import numpy as np
import pytest

from benchmarks import hub_copies

VOCAB = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
CIFAR100_FINE = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch cra crocodile cup "
    "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
    "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
    "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower "
    "sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale "
    "willow_tree wolf woman worm"
).split()
CIFAR100_COARSE = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things "
    "large_natural_outdoor_scenes large_omnivores_and_herbivores medium_mammals non-insect_invertebrates "
    "people reptiles small_mammals trees vehicles_1 vehicles_2"
).split()
STRING = datasets.Value("string")
EXPECTED = {  # name -> (splits, features), as on the hub
    "femnist": (
        ["train"],
        datasets.Features(
            {
                "image": datasets.Image(),
                "writer_id": STRING,
                "hsf_id": datasets.Value("int64"),
                "character": datasets.ClassLabel(
                    names=list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
                ),
            }
        ),
    ),
    "shakespeare": (["train"], datasets.Features({"character_id": STRING, "x": STRING, "y": STRING})),
    "sent140": (
        ["train", "test"],
        datasets.Features(
            {
                "text": STRING,
                "date": STRING,
                "user": STRING,
                "sentiment": datasets.Value("int32"),
                "query": STRING,
            }
        ),
    ),
    "cifar10": (
        ["train", "test"],
        datasets.Features(
            {
                "img": datasets.Image(),
                "label": datasets.ClassLabel(
                    names="airplane automobile bird cat deer dog frog horse ship truck".split()
                ),
            }
        ),
    ),
    "cifar100": (
        ["train", "test"],
        datasets.Features(
            {
                "img": datasets.Image(),
                "fine_label": datasets.ClassLabel(names=CIFAR100_FINE),
                "coarse_label": datasets.ClassLabel(names=CIFAR100_COARSE),
            }
        ),
    ),
}


class _Copies(dict):
    """Each copy at its default size, written on first use and loaded back from disk."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, name: str) -> datasets.DatasetDict:
        path = hub_copies.WRITERS[name](self.root / name)
        assert path == self.root / name
        self[name] = datasets.load_from_disk(str(path))
        return self[name]


@pytest.fixture(scope="module")
def copies(tmp_path_factory) -> _Copies:
    return _Copies(tmp_path_factory.mktemp("hub_copies"))


def test_hub_names_name_the_hub_datasets_copied():
    assert hub_copies.HUB_NAMES == {
        "femnist": "flwrlabs/femnist",
        "shakespeare": "flwrlabs/shakespeare",
        "sent140": "stanfordnlp/sentiment140",
        "cifar10": "uoft-cs/cifar10",
        "cifar100": "uoft-cs/cifar100",
    }


@pytest.mark.parametrize("name", list(EXPECTED))
def test_copy_has_the_hub_splits_columns_and_feature_types(copies, name):
    splits, features = EXPECTED[name]
    copy = copies[name]
    assert isinstance(copy, datasets.DatasetDict) and list(copy) == splits
    for split in splits:
        assert copy[split].features == features
        assert list(copy[split].features) == list(features)  # in the hub's column order
        assert len(copy[split]) > 0


def test_femnist_values(copies):
    image = copies["femnist"]["train"][0]["image"]
    train = copies["femnist"]["train"].select_columns(["writer_id", "hsf_id", "character"])[:]
    assert image.mode == "L" and image.size == (28, 28)
    assert all(re.fullmatch(r"f\d{4}_\d{2}", w) for w in train["writer_id"])
    assert set(train["hsf_id"]) <= set(range(8))
    counts = Counter(train["writer_id"])
    assert len(counts) == 30 and all(20 <= n <= 60 for n in counts.values())
    assert _grouped(train["writer_id"])  # each writer's rows are contiguous, as on the hub
    assert len(set(train["character"])) > 40 and set(train["character"]) <= set(range(62))
    pixels = np.asarray(image)
    assert pixels.dtype == np.uint8 and pixels.min() < 100 and pixels.max() > 200  # ink on a page


def test_shakespeare_rows_are_consecutive_windows_of_each_roles_text(copies):
    train = copies["shakespeare"]["train"][:]
    roles, xs, ys = train["character_id"], train["x"], train["y"]
    assert all(len(x) == 80 for x in xs) and all(len(y) == 1 for y in ys)
    assert set("".join(xs) + "".join(ys)) <= set(VOCAB)
    assert all(re.fullmatch(r"[A-Z0-9_]+", r) for r in roles)
    counts = Counter(roles)
    assert len(counts) == 12 and all(400 <= n <= 700 for n in counts.values())
    assert _grouped(roles)
    for i in range(len(xs) - 1):
        if roles[i] == roles[i + 1]:
            assert xs[i + 1] == xs[i][1:] + ys[i]  # overlap by 79; x's last character is y before it


def test_sent140_values(copies):
    train, test = copies["sent140"]["train"][:], copies["sent140"]["test"][:]
    assert len(test["text"]) == 50
    assert set(train["sentiment"]) == {0, 4} and set(test["sentiment"]) == {0, 2, 4}
    assert train["sentiment"] == sorted(train["sentiment"])  # the hub's order: negatives, then positives
    assert set(train["query"]) == {"NO_QUERY"} and "NO_QUERY" not in test["query"]
    date = r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun) [A-Z][a-z]{2} \d{2} \d{2}:\d{2}:\d{2} (PDT|UTC) 2009"
    assert all(re.fullmatch(date, d) for d in train["date"] + test["date"])
    counts = Counter(train["user"])
    assert len(counts) == 40 and all(5 <= n <= 30 for n in counts.values())
    assert all(train["text"]) and all(test["text"])
    positive = Counter(u for u, s in zip(train["user"], train["sentiment"]) if s == 4)
    leaning = [positive[user] / n for user, n in counts.items()]
    assert min(leaning) < 0.4 and max(leaning) > 0.6  # users lean one way or the other: non-IID


@pytest.mark.parametrize("name, sizes", [("cifar10", (600, 200)), ("cifar100", (1000, 300))])
def test_cifar_values(copies, name, sizes):
    copy = copies[name]
    assert (len(copy["train"]), len(copy["test"])) == sizes
    image = copy["train"][0]["img"]
    assert image.mode == "RGB" and image.size == (32, 32)
    label = "label" if name == "cifar10" else "fine_label"
    classes = 10 if name == "cifar10" else 100
    assert set(copy["train"][label]) <= set(range(classes)) and len(set(copy["train"][label])) > 0.8 * classes


def test_cifar100_coarse_labels_are_the_fine_labels_superclasses(copies):
    pairs = set()
    for split in ("train", "test"):
        pairs |= set(zip(copies["cifar100"][split]["fine_label"], copies["cifar100"][split]["coarse_label"]))
    coarse_of = dict(pairs)
    assert len(coarse_of) == len(pairs)  # one superclass per fine class
    seen_on_the_hub = {19: 11, 29: 15, 0: 4, 11: 14, 1: 1, 86: 5, 90: 18, 28: 3, 23: 10, 96: 17, 82: 2, 17: 9}
    seen_on_the_hub |= {97: 8, 80: 16, 64: 12, 81: 19, 24: 7, 84: 6, 45: 13}
    assert all(coarse_of[f] == c for f, c in seen_on_the_hub.items())
    assert sorted(Counter(hub_copies.CIFAR100_COARSE_OF_FINE.tolist()).values()) == [5] * 20


SMALL = {  # writers at small sizes, for the seeding tests
    "femnist": lambda path, seed: hub_copies.write_femnist(path, seed=seed, writers=3, samples=(2, 4)),
    "shakespeare": lambda path, seed: hub_copies.write_shakespeare(path, seed=seed, roles=20, windows=(1, 3)),
    "sent140": lambda path, seed: hub_copies.write_sent140(path, seed=seed, users=3, tweets=(1, 2), test=4),
    "cifar10": lambda path, seed: hub_copies.write_cifar10(path, seed=seed, train=5, test=3),
    "cifar100": lambda path, seed: hub_copies.write_cifar100(path, seed=seed, train=5, test=3),
}


def test_write_all_writes_every_copy_under_its_name(tmp_path, monkeypatch):
    small = {name: (lambda path, write=write: write(path, 0)) for name, write in SMALL.items()}
    monkeypatch.setattr(hub_copies, "WRITERS", small)
    paths = hub_copies.write_all(tmp_path)
    assert paths == {name: tmp_path / name for name in hub_copies.HUB_NAMES}
    for name, path in paths.items():
        assert list(datasets.load_from_disk(str(path))) == EXPECTED[name][0]


@pytest.mark.parametrize("name", list(SMALL))
def test_a_seed_fixes_the_copy_and_size_keywords_size_it(tmp_path, name):
    paths = [SMALL[name](tmp_path / f"{i}", seed) for i, seed in enumerate((3, 3, 4))]
    copies = [datasets.load_from_disk(str(path)) for path in paths]
    assert list(copies[0]) == EXPECTED[name][0]
    for split in copies[0]:
        assert copies[0][split].features == EXPECTED[name][1]
        assert copies[0][split].to_dict() == copies[1][split].to_dict()
    assert any(copies[0][s].to_dict() != copies[2][s].to_dict() for s in copies[0])
    sizes = {s: len(copies[0][s]) for s in copies[0]}
    expected = {"cifar10": {"train": 5, "test": 3}, "cifar100": {"train": 5, "test": 3}}.get(name)
    if expected:
        assert sizes == expected
    elif name == "femnist":
        assert 6 <= sizes["train"] <= 12 and len(set(copies[0]["train"]["writer_id"])) == 3
    elif name == "shakespeare":  # more roles than the named ones: numbered ones, all distinct
        assert 20 <= sizes["train"] <= 60 and len(set(copies[0]["train"]["character_id"])) == 20
    else:
        assert 3 <= sizes["train"] <= 6 and sizes["test"] == 4


@pytest.mark.parametrize(
    "name, image, label, classes",
    [
        ("femnist", "image", "character", 62),
        ("cifar10", "img", "label", 10),
        ("cifar100", "img", "fine_label", 100),
        ("cifar100", "img", "coarse_label", 20),
    ],
)
def test_image_copies_are_learnable(copies, name, image, label, classes):
    """A nearest-class-mean classifier on raw pixels beats chance three times over."""
    copy = copies[name]
    if "test" not in copy:
        copy = copy["train"].train_test_split(test_size=0.25, seed=0)
    accuracy = _nearest_mean_accuracy(copy["train"], copy["test"], image, label)
    assert accuracy > 3 / classes


def test_text_copies_are_learnable(copies):
    """Shakespeare: the most frequent next character after each 2-character context beats always
    guessing the most frequent character; Sentiment140: a word lexicon from train beats the majority."""
    train = copies["shakespeare"]["train"][:]
    follow: dict[str, Counter] = defaultdict(Counter)
    rows = list(zip(train["character_id"], train["x"], train["y"]))
    roles = sorted(set(train["character_id"]))
    held_out = set(roles[::4])
    for role, x, y in rows:
        if role not in held_out:
            follow[x[-2:]][y] += 1
    test = [(x, y) for role, x, y in rows if role in held_out]
    top = Counter(y for _, y in test).most_common(1)[0]
    guess = sum(follow[x[-2:]].most_common(1)[0][0] == y for x, y in test if follow[x[-2:]])
    assert top[0] == " " and guess / len(test) > top[1] / len(test) + 0.15

    sent = {split: copies["sent140"][split][:] for split in ("train", "test")}
    words = {0: Counter(), 4: Counter()}
    for text, s in zip(sent["train"]["text"], sent["train"]["sentiment"]):
        words[s].update(text.split())
    totals = {s: sum(c.values()) for s, c in words.items()}

    def positive(text: str) -> bool:  # naive Bayes with add-one smoothing, equal priors
        ratios = [(words[4][w] + 1) / totals[4] * totals[0] / (words[0][w] + 1) for w in text.split()]
        return sum(np.log(ratios)) > 0

    rows = [(t, s) for t, s in zip(sent["test"]["text"], sent["test"]["sentiment"]) if s != 2]
    correct = sum(positive(t) == (s == 4) for t, s in rows)
    majority = max(Counter(s for _, s in rows).values())
    assert correct > majority + 0.2 * len(rows)


def _grouped(keys: list[str]) -> bool:
    """Whether equal keys are contiguous."""
    runs = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
    return len(runs) == len(set(keys))


def _nearest_mean_accuracy(train, test, image: str, label: str) -> float:
    def arrays(ds):
        x = np.stack([np.asarray(im, dtype=np.float32).ravel() for im in ds[image]])
        return x, np.asarray(ds[label])

    (x, y), (x_test, y_test) = arrays(train), arrays(test)
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(0) for c in classes])
    distances = (means**2).sum(1)[None] - 2 * x_test @ means.T  # + |x|^2, the same for every class
    return float((classes[distances.argmin(1)] == y_test).mean())
