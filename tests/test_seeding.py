"""Seeds derive from (seed, purpose, keys) alone; the batched derivation equals the scalar one."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.seeding import derive_seed, derive_seeds


@pytest.mark.parametrize("seed", [0, 7, 2**32 - 1, 2**32, 2**45 + 3])  # one- and multi-word seeds
@pytest.mark.parametrize("keys", [(), (3,), (0, 2**33)])  # entropy shorter and longer than the pool
def test_batched_seeds_equal_numpys_seed_sequence_one_by_one(seed, keys):
    last = np.array([0, 1, 2, 99, 2**31, 2**32 - 1])
    want = [derive_seed(seed, "shuffle", *keys, int(k)) for k in last]
    assert derive_seeds(seed, "shuffle", *keys, last=last).tolist() == want


def test_seeds_depend_on_every_argument():
    base = derive_seed(0, "shuffle", 1, 2)
    assert base == derive_seed(0, "shuffle", 1, 2)
    others = [
        derive_seed(1, "shuffle", 1, 2),
        derive_seed(0, "sample", 1, 2),
        derive_seed(0, "shuffle", 2, 2),
        derive_seed(0, "shuffle", 1, 3),
    ]
    assert base not in others


def test_batched_seeds_refuse_keys_past_32_bits():
    with pytest.raises(ValueError, match="below 2\\*\\*32"):
        derive_seeds(0, "shuffle", last=np.array([2**32]))
