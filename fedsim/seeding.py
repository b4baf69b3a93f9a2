"""Every random draw derives from (seed, purpose, round, client id).

Nothing in fedsim uses a global random state, so results do not depend on how many
workers run, in which order clients finish, or whether a run was resumed.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def _entropy(seed: int, purpose: str, keys: tuple[int, ...]) -> list[int]:
    return [seed, zlib.crc32(purpose.encode()), *keys]


def derive_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit seed that depends only on the arguments."""
    state = np.random.SeedSequence(_entropy(seed, purpose, keys)).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def numpy_rng(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """A numpy Generator for (seed, purpose, *keys), e.g. ("sample", round)."""
    return np.random.default_rng(np.random.SeedSequence(_entropy(seed, purpose, keys)))


def torch_generator(seed: int, purpose: str, *keys: int) -> torch.Generator:
    """A CPU torch.Generator for (seed, purpose, *keys), e.g. ("shuffle", round, client)."""
    gen = torch.Generator()
    gen.manual_seed(derive_seed(seed, purpose, *keys))
    return gen
