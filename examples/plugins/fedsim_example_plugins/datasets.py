"""A dataset plugin: Gaussian clusters generated from the seed, offline."""

from __future__ import annotations

import numpy as np

from fedsim.config import DataConfig
from fedsim.data import Dataset, DatasetBundle

CLASSES, FEATURES, DEFAULT_SAMPLES = 10, 16, 2000


class Blobs(Dataset):
    """Blobs: 10 Gaussian clusters in 16 dimensions (unit variance, centres ~ N(0, 2^2)), seeded.

    `data.samples` sets the size (default 2000), `data.test_fraction` the held-out share.
    """

    def load(self, data: DataConfig, seed: int) -> DatasetBundle:
        rng = np.random.default_rng(seed)
        n = data.samples or DEFAULT_SAMPLES
        centres = rng.normal(0.0, 2.0, size=(CLASSES, FEATURES))
        y = rng.integers(0, CLASSES, size=n)
        x = (centres[y] + rng.normal(size=(n, FEATURES))).astype(np.float32)
        test = int(round(data.test_fraction * n))
        return DatasetBundle.from_arrays("blobs", (x[test:], y[test:]), (x[:test], y[:test]), CLASSES)
