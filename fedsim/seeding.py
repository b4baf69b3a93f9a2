"""Every random draw derives from (seed, purpose, round, client id).

Nothing in fedsim uses a global random state, so results do not depend on how many
workers run, in which order clients finish, or whether a run was resumed.
"""

from __future__ import annotations

import zlib

import numpy as np


def _entropy(seed: int, purpose: str, keys: tuple[int, ...]) -> list[int]:
    return [seed, zlib.crc32(purpose.encode()), *keys]


def derive_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit seed that depends only on the arguments."""
    state = np.random.SeedSequence(_entropy(seed, purpose, keys)).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


# numpy's SeedSequence constants (O'Neill's seed_seq), for `derive_seeds`
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R, _MASK32, _POOL = 0xCA01F9DD, 0x4973F715, 0xFFFFFFFF, 4


def _words(value: int) -> list[int]:
    """`value` as SeedSequence reads an int: little-endian 32-bit words, one word for 0."""
    words = [value & _MASK32]
    while value > _MASK32:
        value >>= 32
        words.append(value & _MASK32)
    return words


def derive_seeds(seed: int, purpose: str, *keys: int, last: np.ndarray) -> np.ndarray:
    """`[derive_seed(seed, purpose, *keys, k) for k in last]`, computed for all of `last` at once.

    Replays `np.random.SeedSequence(entropy).generate_state(2)` with numpy array arithmetic, one
    lane per value of `last` (each below 2**32): a round's shuffle seeds for a thousand clients
    cost one call instead of a thousand SeedSequence objects.
    """
    last = np.asarray(last, dtype=np.uint64)
    if last.size and int(last.max()) > _MASK32:
        raise ValueError("derive_seeds takes last keys below 2**32")
    prefix = [w for key in _entropy(seed, purpose, keys) for w in _words(int(key))]
    entropy = [np.full(last.shape, w, dtype=np.uint64) for w in prefix] + [last]
    mask, shift = np.uint64(_MASK32), np.uint64(16)
    hash_a = _INIT_A

    def hashmix(value: np.ndarray) -> np.ndarray:
        nonlocal hash_a
        value = value ^ np.uint64(hash_a)
        hash_a = (hash_a * _MULT_A) & _MASK32
        value = (value * np.uint64(hash_a)) & mask
        return value ^ (value >> shift)

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        value = (np.uint64(_MIX_L) * x - np.uint64(_MIX_R) * y) & mask  # wraps mod 2**64, then 2**32
        return value ^ (value >> shift)

    zeros = np.zeros(last.shape, dtype=np.uint64)
    pool = [hashmix(entropy[i] if i < len(entropy) else zeros) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for word in entropy[_POOL:]:
        for dst in range(_POOL):
            pool[dst] = mix(pool[dst], hashmix(word))
    hash_b, state = _INIT_B, []
    for word in pool[:2]:  # generate_state(2): the first two pool words, hashed
        value = word ^ np.uint64(hash_b)
        hash_b = (hash_b * _MULT_B) & _MASK32
        value = (value * np.uint64(hash_b)) & mask
        state.append(value ^ (value >> shift))
    return ((state[0] << np.uint64(31)) ^ state[1]).astype(np.int64)


def numpy_rng(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """A numpy Generator for (seed, purpose, *keys), e.g. ("sample", round)."""
    return np.random.default_rng(np.random.SeedSequence(_entropy(seed, purpose, keys)))


def torch_generator(seed: int, purpose: str, *keys: int):
    """A CPU torch.Generator for (seed, purpose, *keys), e.g. ("shuffle", round, client)."""
    import torch

    return torch.Generator().manual_seed(derive_seed(seed, purpose, *keys))
