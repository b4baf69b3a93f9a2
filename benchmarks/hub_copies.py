"""Tiny, learnable local copies of five federated benchmarks, in the schemas of their hub copies.

Each writer saves a `datasets.DatasetDict` with `save_to_disk`, with exactly the splits, column
names and feature types of the Hugging Face hub dataset it stands in for (`HUB_NAMES`):

- ``femnist`` (flwrlabs/femnist): ``train``; ``image`` (Image, 28x28 "L"), ``writer_id`` (string),
  ``hsf_id`` (int64, 0..7), ``character`` (ClassLabel, "0".."9", "A".."Z", "a".."z").
- ``shakespeare`` (flwrlabs/shakespeare): ``train``; ``character_id``, ``x`` (80 characters),
  ``y`` (the next character), all strings; one role's rows are its text's consecutive windows.
- ``sent140`` (stanfordnlp/sentiment140): ``train``, ``test``; ``text``, ``date``, ``user``,
  ``sentiment`` (int32: 0, 4; the test split also has 2) and ``query``.
- ``cifar10`` (uoft-cs/cifar10): ``train``, ``test``; ``img`` (Image, 32x32 RGB), ``label``.
- ``cifar100`` (uoft-cs/cifar100): ``train``, ``test``; ``img``, ``fine_label``, ``coarse_label``.

fedsim's loaders read them offline as they would read a local copy of the real dataset, so the
tests and the `experiments/benchmarks/` CI runs exercise the real loading, partitioning and
training paths without the hub. The content is drawn from ``numpy.random.default_rng(seed)``
and is learnable on purpose (class prototypes, per-role word preferences, sentiment words), so
a run can assert that training beats chance or a trivial baseline; clients (writers, roles,
users) differ from each other, as the real ones do. Size keywords make bigger copies.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import datasets

HUB_NAMES = {  # fedsim name -> the hub dataset whose schema the copy has
    "femnist": "flwrlabs/femnist",
    "shakespeare": "flwrlabs/shakespeare",
    "sent140": "stanfordnlp/sentiment140",
    "cifar10": "uoft-cs/cifar10",
    "cifar100": "uoft-cs/cifar100",
}

FEMNIST_CHARACTERS = [*"0123456789", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", *"abcdefghijklmnopqrstuvwxyz"]
SHAKESPEARE_VOCAB = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
SHAKESPEARE_WINDOW = 80
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_SUPERCLASSES = {  # coarse name -> its five fine classes, as CIFAR-100 groups them
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["cra", "lobster", "snail", "spider", "worm"],  # "cra": the hub's spelling
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
CIFAR100_COARSE_NAMES = list(CIFAR100_SUPERCLASSES)
CIFAR100_FINE_NAMES = sorted(fine for fines in CIFAR100_SUPERCLASSES.values() for fine in fines)
_COARSE_BY_FINE = {fine: c for c, fines in enumerate(CIFAR100_SUPERCLASSES.values()) for fine in fines}
CIFAR100_COARSE_OF_FINE = np.array([_COARSE_BY_FINE[f] for f in CIFAR100_FINE_NAMES])  # fine label -> coarse


def _save(splits: dict[str, dict], features: datasets.Features, path: Path) -> Path:
    """Save the splits' columns as one DatasetDict at `path`, without datasets' progress bars."""
    import datasets

    path = Path(path)
    dataset_dict = datasets.DatasetDict(
        {name: datasets.Dataset.from_dict(columns, features=features) for name, columns in splits.items()}
    )
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        dataset_dict.save_to_disk(str(path))
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    return path


def _png(images: np.ndarray) -> list[dict]:
    """uint8 arrays (n, H, W) or (n, H, W, 3) as PNG files ("L" or "RGB"), as an Image column stores them.

    Encoded here uncompressed (zlib level 0) rather than by datasets at PIL's default level 6,
    which spends most of a writer's time failing to compress noise (the files are ~5% bigger);
    they decode to the same pixels.
    """
    import io

    from PIL import Image

    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", compress_level=0)
        out.append({"bytes": buffer.getvalue(), "path": None})
    return out


def _shifted(image: np.ndarray, dy: int, dx: int, fill: float) -> np.ndarray:
    """`image` moved by (dy, dx) pixels, the uncovered border set to `fill` (no wrap-around)."""
    out = np.full_like(image, fill)
    h, w = image.shape[:2]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = image[ys, xs]
    return out


# --- FEMNIST ---------------------------------------------------------------------------------


def femnist_features() -> datasets.Features:
    import datasets

    return datasets.Features(
        {
            "image": datasets.Image(),
            "writer_id": datasets.Value("string"),
            "hsf_id": datasets.Value("int64"),
            "character": datasets.ClassLabel(names=FEMNIST_CHARACTERS),
        }
    )


def _character_prototypes(rng: np.random.Generator) -> np.ndarray:
    """Per class, 2-4 random pen strokes on a 28x28 canvas: float ink in [0, 1], shape (62, 28, 28)."""
    from PIL import Image, ImageDraw

    protos = np.empty((len(FEMNIST_CHARACTERS), 28, 28), dtype=np.float32)
    for c in range(len(FEMNIST_CHARACTERS)):
        canvas = Image.new("L", (28, 28), 0)
        draw = ImageDraw.Draw(canvas)
        for _ in range(rng.integers(2, 5)):
            points = [tuple(p) for p in rng.integers(5, 23, (rng.integers(2, 4), 2)).tolist()]
            draw.line(points, fill=255, width=2)
        protos[c] = np.asarray(canvas, dtype=np.float32) / 255.0
    return protos


def write_femnist(
    path: Path,
    *,
    seed: int = 0,
    writers: int = 30,
    samples: tuple[int, int] = (20, 60),
    classes: int = 62,
    jitter: int = 1,
) -> Path:
    """FEMNIST as flwrlabs/femnist: 28x28 greyscale characters of 62 classes, grouped by writer.

    Each class is a fixed set of random strokes (dark ink on a light page); each writer has its
    own style (an offset, bolder or thinner ink, contrast, noise), one HSF partition
    (``hsf_id``) and its own class mix (digits more frequent than letters, as in FEMNIST), and
    writes between ``samples[0]`` and ``samples[1]`` characters (inclusive). Rows are grouped by
    writer, as on the hub. A class is told apart by where its strokes are, so a CNN that flattens
    its feature maps (LEAF's) learns it in a few hundred SGD steps, one that only averages them
    globally (fedsim's `cnn`) much more slowly unless it normalises (``norm = "batch"``).
    ``classes`` < 62 draws only the first ``classes`` characters (the label column keeps all 62)
    and ``jitter`` is each sample's random shift in pixels beyond its writer's: fewer classes and
    no jitter make a copy a CI-sized federated run learns.
    """
    rng = np.random.default_rng(seed)
    protos = _character_prototypes(rng)
    base = np.where(np.arange(classes) < 10, 3.0, 1.0)  # the class mix over the first `classes` characters
    columns: dict[str, list] = {"image": [], "writer_id": [], "hsf_id": [], "character": []}
    for w in range(writers):
        writer_id = f"f{w:04d}_{rng.integers(0, 100):02d}"
        hsf = int(rng.integers(0, 8))
        shift = rng.integers(-2, 3, 2)
        bold = rng.random() < 0.4
        ink, background, noise = rng.uniform(0.6, 1.0), rng.uniform(0.9, 1.0), rng.uniform(0.02, 0.1)
        p = rng.dirichlet(3.0 * base)
        n = int(rng.integers(samples[0], samples[1] + 1))
        labels = rng.choice(len(base), size=n, p=p)
        images = np.empty((n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):
            stroke = protos[c]
            if bold:
                stroke = np.maximum(stroke, _shifted(stroke, 1, 1, 0.0))
            dy, dx = shift + rng.integers(-jitter, jitter + 1, 2)
            stroke = _shifted(stroke, int(dy), int(dx), 0.0)
            page = background - ink * stroke + rng.normal(0.0, noise, (28, 28))
            images[i] = np.clip(page * 255.0, 0, 255).astype(np.uint8)
        columns["image"] += _png(images)
        columns["writer_id"] += [writer_id] * n
        columns["hsf_id"] += [hsf] * n
        columns["character"] += labels.tolist()
    return _save({"train": columns}, femnist_features(), path)


# --- Shakespeare -----------------------------------------------------------------------------

SHAKESPEARE_WORDS = (
    "thou thee thy the king my lord and to of a i is not that good sir love what with "
    "you he her him shall will be me so no but this o'er 'tis come now say death night heart"
).split()
SHAKESPEARE_ROLES = [  # (play, speaking role), as LEAF names a client: PLAY_ROLE
    ("THE_TRAGEDY_OF_KING_LEAR", "KENT"),
    ("THE_TRAGEDY_OF_KING_LEAR", "CORDELIA"),
    ("THE_TRAGEDY_OF_HAMLET_PRINCE_OF_DENMARK", "HAMLET"),
    ("THE_TRAGEDY_OF_HAMLET_PRINCE_OF_DENMARK", "OPHELIA"),
    ("THE_TRAGEDY_OF_MACBETH", "MACBETH"),
    ("THE_TRAGEDY_OF_MACBETH", "LADY_MACBETH"),
    ("THE_TEMPEST", "PROSPERO"),
    ("THE_TEMPEST", "MIRANDA"),
    ("THE_TRAGEDY_OF_ROMEO_AND_JULIET", "ROMEO"),
    ("THE_TRAGEDY_OF_ROMEO_AND_JULIET", "JULIET"),
    ("A_MIDSUMMER_NIGHTS_DREAM", "PUCK"),
    ("TWELFTH_NIGHT_OR_WHAT_YOU_WILL", "VIOLA"),
    ("THE_TRAGEDY_OF_OTHELLO_MOOR_OF_VENICE", "IAGO"),
    ("AS_YOU_LIKE_IT", "ROSALIND"),
]


def shakespeare_features() -> datasets.Features:
    import datasets

    string = datasets.Value("string")
    return datasets.Features({"character_id": string, "x": string, "y": string})


def _role_ids(roles: int) -> list[str]:
    """`roles` distinct PLAY_ROLE ids: the named roles first, then numbered citizens of their plays."""
    ids = [f"{play}_{role}" for play, role in SHAKESPEARE_ROLES]
    plays = [play for play, _ in SHAKESPEARE_ROLES]
    for k in range(max(0, roles - len(ids))):
        ids.append(f"{plays[k % len(plays)]}_CITIZEN_{k + 1}")
    return ids[:roles]


def _role_text(rng: np.random.Generator, length: int) -> str:
    """`length` characters of verse-like lines in one role's own word preferences.

    The role favours some of the vocabulary (a Dirichlet draw) and follows some words with a
    favourite next word, so both the words and their order are learnable; lines start with a
    capital and end with punctuation, speeches with a newline.
    """
    words = SHAKESPEARE_WORDS
    zipf = 1.0 / np.arange(1, len(words) + 1)
    p = 0.5 * zipf / zipf.sum() + 0.5 * rng.dirichlet(np.full(len(words), 0.5))
    follower = rng.permutation(len(words))
    marks, mark_p = [",", ".", "!", "?", ";", ":"], [0.35, 0.3, 0.1, 0.1, 0.1, 0.05]
    parts: list[str] = []
    size = 0
    while size < length:
        n = int(rng.integers(3, 9))
        line = [int(rng.choice(len(words), p=p))]
        for _ in range(n - 1):
            line.append(int(follower[line[-1]]) if rng.random() < 0.35 else int(rng.choice(len(words), p=p)))
        text = " ".join(words[w] for w in line)
        text = text[0].upper() + text[1:] if text[0].isalpha() else text[0] + text[1].upper() + text[2:]
        text += str(rng.choice(marks, p=mark_p)) + ("\n" if rng.random() < 0.3 else " ")
        parts.append(text)
        size += len(text)
    return "".join(parts)[:length]


def write_shakespeare(
    path: Path, *, seed: int = 0, roles: int = 12, windows: tuple[int, int] = (400, 700)
) -> Path:
    """Shakespeare as flwrlabs/shakespeare: next-character prediction, one client per speaking role.

    Each role speaks its own English-like text (`_role_text`, drawn from a small fixed vocabulary,
    all in LEAF's 80-character vocabulary) and contributes between ``windows[0]`` and
    ``windows[1]`` rows: row i has ``x = text[i:i+80]`` and ``y = text[i+80]``, so a role's rows
    are consecutive, overlapping windows in the text's order (the data is temporal). A role needs
    a few hundred windows to keep test windows after LEAF's temporal split, which drops the 79
    after its training ones (`fedsim.data.natural`).
    """
    rng = np.random.default_rng(seed)
    columns: dict[str, list] = {"character_id": [], "x": [], "y": []}
    for role in _role_ids(roles):
        n = int(rng.integers(windows[0], windows[1] + 1))
        text = _role_text(rng, n + SHAKESPEARE_WINDOW)
        columns["character_id"] += [role] * n
        columns["x"] += [text[i : i + SHAKESPEARE_WINDOW] for i in range(n)]
        columns["y"] += [text[i + SHAKESPEARE_WINDOW] for i in range(n)]
    return _save({"train": columns}, shakespeare_features(), path)


# --- Sentiment140 ----------------------------------------------------------------------------

SENT140_POSITIVE = (
    "love great happy awesome good fun thanks best amazing nice "
    "excited yay lovely perfect glad beautiful cool wonderful enjoy smile"
).split()
SENT140_NEGATIVE = (
    "hate sad bad awful tired sick miss worst sucks ugh "
    "hurts boring annoyed lonely cry broke stupid sorry terrible headache"
).split()
SENT140_FILLER = (
    "i the today work just my going to so at home now is it day this morning night "
    "with and class for in on you lol really time back got"
).split()
SENT140_QUERIES = "kindle2 aig jquery obama nike lebron iphone visa safeway google".split()
_NAMES = "kat mike jen dan sam lily tom amy joe zoe max eve ben mia leo ana".split()
_NAME_ENDINGS = ["", "_xo", "123", "88", "_music", "love", "_b", "2009", "fan", "x", "_22", "girl"]
_WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def sent140_features() -> datasets.Features:
    import datasets

    return datasets.Features(
        {
            "text": datasets.Value("string"),
            "date": datasets.Value("string"),
            "user": datasets.Value("string"),
            "sentiment": datasets.Value("int32"),
            "query": datasets.Value("string"),
        }
    )


def _user_names(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    """`n` Twitter-like user names not in `taken` (which they join), numbered where they would clash."""
    names: list[str] = []
    for _ in range(n):
        name = base = f"{rng.choice(_NAMES)}{rng.choice(_NAME_ENDINGS)}"
        k = 1
        while name in taken:
            name, k = f"{base}{k}", k + 1
        taken.add(name)
        names.append(name)
    return names


def _tweet_dates(rng: np.random.Generator, n: int, zone: str, start: str, days: int) -> list[str]:
    """Dates as Sentiment140 writes them ("Mon May 11 03:17:40 UTC 2009"), in English whatever the locale."""
    from datetime import datetime, timedelta

    first = datetime.fromisoformat(start)
    out = []
    for seconds in rng.integers(0, days * 86_400, n).tolist():
        t = first + timedelta(seconds=seconds)
        out.append(f"{_WEEKDAYS[t.weekday()]} {_MONTHS[t.month - 1]} {t:%d %H:%M:%S} {zone} {t.year}")
    return out


def _tweet(rng: np.random.Generator, sentiment: int, query: str = "") -> str:
    """Filler words plus one or two words of the tweet's sentiment (none when neutral, 2), and
    sometimes one word of the other sentiment, so a bag of words learns it but not perfectly."""
    words = [str(w) for w in rng.choice(SENT140_FILLER, int(rng.integers(3, 10)))]
    if sentiment != 2:
        own, other = (SENT140_POSITIVE, SENT140_NEGATIVE)
        if sentiment == 0:
            own, other = other, own
        words += [str(w) for w in rng.choice(own, int(rng.integers(1, 3)))]
        if rng.random() < 0.2:
            words.append(str(rng.choice(other)))
    if query:
        words.append(query)
    words = [words[i] for i in rng.permutation(len(words))]
    text = " ".join(words)
    if rng.random() < 0.2:
        text = f"@{rng.choice(_NAMES)} {text}"
    return text + str(rng.choice(["", "", "!", "!!", " :)" if sentiment == 4 else "..."]))


def write_sent140(
    path: Path, *, seed: int = 0, users: int = 40, tweets: tuple[int, int] = (5, 30), test: int = 50
) -> Path:
    """Sentiment140 as stanfordnlp/sentiment140: tweets labelled 0 (negative) or 4 (positive), by user.

    Each of ``users`` users writes between ``tweets[0]`` and ``tweets[1]`` tweets and leans
    positive or negative (70-95% of one sentiment), so users differ as federated clients do. A
    tweet is filler words plus words of its sentiment (`_tweet`). As on the hub, train rows are
    ordered all negatives then all positives, each by date (PDT dates, query "NO_QUERY"); the
    ``test`` split (default 50 rows, other users) also has neutral tweets (2), names a query term
    and has UTC dates.
    """
    rng = np.random.default_rng(seed)
    taken: set[str] = set()
    rows: list[tuple[int, str, str, str]] = []  # (sentiment, date, user, text)
    for user in _user_names(rng, users, taken):
        positive_share = rng.uniform(0.7, 0.95) if rng.random() < 0.5 else rng.uniform(0.05, 0.3)
        n = int(rng.integers(tweets[0], tweets[1] + 1))
        sentiments = np.where(rng.random(n) < positive_share, 4, 0).tolist()
        dates = _tweet_dates(rng, n, "PDT", "2009-04-06T22:19:45", 75)
        rows += [(s, d, user, _tweet(rng, s)) for s, d in zip(sentiments, dates)]
    order = sorted(range(len(rows)), key=lambda i: (rows[i][0], _date_key(rows[i][1])))
    train = {
        "text": [rows[i][3] for i in order],
        "date": [rows[i][1] for i in order],
        "user": [rows[i][2] for i in order],
        "sentiment": [rows[i][0] for i in order],
        "query": ["NO_QUERY"] * len(order),
    }
    sentiments = rng.choice([0, 2, 4], size=test, p=[0.35, 0.3, 0.35]).tolist()
    queries = [str(q) for q in rng.choice(SENT140_QUERIES, test)]
    test_split = {
        "text": [_tweet(rng, s, q) for s, q in zip(sentiments, queries)],
        "date": _tweet_dates(rng, test, "UTC", "2009-05-11T03:17:40", 30),
        "user": _user_names(rng, test, taken),
        "sentiment": sentiments,
        "query": queries,
    }
    return _save({"train": train, "test": test_split}, sent140_features(), path)


def _date_key(date: str) -> tuple[int, str]:
    """Sort key of a Sentiment140 date string within one year: (month, "day hh:mm:ss")."""
    _, month, day, clock, *_ = date.split()
    return _MONTHS.index(month), f"{day} {clock}"


# --- CIFAR-10 / CIFAR-100 --------------------------------------------------------------------


def cifar10_features() -> datasets.Features:
    import datasets

    return datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CIFAR10_NAMES)})


def cifar100_features() -> datasets.Features:
    import datasets

    return datasets.Features(
        {
            "img": datasets.Image(),
            "fine_label": datasets.ClassLabel(names=CIFAR100_FINE_NAMES),
            "coarse_label": datasets.ClassLabel(names=CIFAR100_COARSE_NAMES),
        }
    )


def _colour_patterns(rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` smooth random colour patterns, float32 (n, 32, 32, 3) in [0, 255]: 4x4x3 noise, upsampled."""
    up = np.stack([np.interp(np.linspace(0, 3, 32), np.arange(4), e) for e in np.eye(4)], axis=1)  # (32, 4)
    coarse = rng.uniform(0, 255, (n, 4, 4, 3)).astype(np.float32)
    return np.einsum("yi,nijc,xj->nyxc", up.astype(np.float32), coarse, up.astype(np.float32), optimize=True)


def _class_looks(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """`n` classes' looks: a smooth colour layout, a colour cast and stripes (angle, period, colour).

    The cast and the stripes survive a CNN's global average pooling (fedsim's `cnn`), the layout
    is where things are in the picture, so both pooling and flattening models can learn a class.
    """
    looks = {
        "layout": _colour_patterns(rng, n),
        "cast": rng.uniform(-1.0, 1.0, (n, 3)),
        "angle": rng.uniform(0.0, np.pi, n),
        "period": rng.uniform(3.0, 8.0, n),
        "stripes": rng.uniform(-1.0, 1.0, (n, 3)),
    }
    return {key: value.astype(np.float32) for key, value in looks.items()}


def _class_signal(
    rng: np.random.Generator,
    looks: dict[str, np.ndarray],
    labels: np.ndarray,
    *,
    layout: float,
    cast: float,
    stripes: float,
) -> np.ndarray:
    """Each label's look, centred on 0 (float32, (n, 32, 32, 3)): its layout at ``layout`` strength,
    its cast of up to ``cast`` grey levels and its stripes of amplitude up to ``stripes``, each
    image's stripes at a random phase."""
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    angle, period = looks["angle"][labels, None, None], looks["period"][labels, None, None]
    phase = rng.uniform(0.0, 2 * np.pi, (len(labels), 1, 1)).astype(np.float32)
    wave = np.sin(np.float32(2 * np.pi) * (np.cos(angle) * xx + np.sin(angle) * yy) / period + phase)
    signal = layout * (looks["layout"][labels] - 127.5) + cast * looks["cast"][labels, None, None, :]
    signal += stripes * wave[..., None] * looks["stripes"][labels, None, None, :]
    return signal


def _photos(rng: np.random.Generator, signal: np.ndarray, *, clutter: float, noise: float) -> np.ndarray:
    """uint8 images of a class signal over a random colour pattern of each image's own at
    ``clutter`` strength (so classes overlap, as photos do), moved by up to 2 pixels, plus noise."""
    images = 127.5 + signal + clutter * (_colour_patterns(rng, len(signal)) - 127.5)
    shifts = rng.integers(-2, 3, (len(signal), 2)).tolist()
    images = np.stack([_shifted(image, dy, dx, 127.5) for image, (dy, dx) in zip(images, shifts)])
    images += noise * rng.standard_normal(images.shape, dtype=np.float32)
    return np.clip(images, 0, 255).astype(np.uint8)


def write_cifar10(path: Path, *, seed: int = 0, train: int = 600, test: int = 200) -> Path:
    """CIFAR-10 as uoft-cs/cifar10: 32x32 RGB images of 10 classes, ``train`` and ``test`` rows.

    Each class has its own look (`_class_looks`: colour layout, colour cast, stripes); an image
    is its class's look over clutter of its own, shifted, plus noise (`_photos`). Labels are
    uniform over the classes.
    """
    rng = np.random.default_rng(seed)
    looks = _class_looks(rng, len(CIFAR10_NAMES))
    splits = {}
    for split, n in (("train", train), ("test", test)):
        labels = rng.integers(0, len(CIFAR10_NAMES), n)
        signal = _class_signal(rng, looks, labels, layout=0.5, cast=70.0, stripes=60.0)
        splits[split] = {"img": _png(_photos(rng, signal, clutter=0.4, noise=20.0)), "label": labels.tolist()}
    return _save(splits, cifar10_features(), path)


def write_cifar100(path: Path, *, seed: int = 0, train: int = 1000, test: int = 300) -> Path:
    """CIFAR-100 as uoft-cs/cifar100: 32x32 RGB images, 100 fine classes in 20 superclasses.

    Labels carry CIFAR-100's real fine and coarse names and grouping. An image's signal is 30% its
    superclass's look and 70% its fine class's (`_class_looks`), so a superclass's images look
    alike; the looks are stronger and the clutter weaker than in `write_cifar10`, since each
    class has only about ``train / 100`` training images.
    """
    rng = np.random.default_rng(seed)
    coarse_looks = _class_looks(rng, len(CIFAR100_COARSE_NAMES))
    fine_looks = _class_looks(rng, len(CIFAR100_FINE_NAMES))
    splits = {}
    for split, n in (("train", train), ("test", test)):
        fine = rng.integers(0, len(CIFAR100_FINE_NAMES), n)
        coarse = CIFAR100_COARSE_OF_FINE[fine]
        signal = 0.3 * _class_signal(rng, coarse_looks, coarse, layout=0.45, cast=130.0, stripes=130.0)
        signal += 0.7 * _class_signal(rng, fine_looks, fine, layout=0.45, cast=130.0, stripes=130.0)
        splits[split] = {
            "img": _png(_photos(rng, signal, clutter=0.3, noise=15.0)),
            "fine_label": fine.tolist(),
            "coarse_label": coarse.tolist(),
        }
    return _save(splits, cifar100_features(), path)


WRITERS = {
    "femnist": write_femnist,
    "shakespeare": write_shakespeare,
    "sent140": write_sent140,
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
}


def write_all(root: Path) -> dict[str, Path]:
    """Every copy at its default size, each under ``root / <fedsim name>``; fedsim name -> path."""
    return {name: write(Path(root) / name) for name, write in WRITERS.items()}
