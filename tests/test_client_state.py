"""The client-state store: states beyond the memory budget spill to segment files and read back
exactly, RAM stays within the budget, and a store restored from a flushed index reads it back."""

import random
from pathlib import Path

import torch
from safetensors import safe_open

from fedsim.client_state import ClientStateStore, state_bytes


def random_state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"c": {"w": torch.randn(50, generator=g), "b": torch.randn(3, generator=g)}}


def equal(a, b) -> bool:
    return a.keys() == b.keys() and all(a[g].keys() == b[g].keys() and all(torch.equal(a[g][k], b[g][k]) for k in a[g]) for g in a)


def segments(directory: Path) -> dict[str, set[int]]:
    """Segment file name -> the clients it holds."""
    found = {}
    for path in sorted(directory.glob("seg_*.safetensors")):
        with safe_open(path, "pt") as f:
            found[path.name] = {int(key.split("/")[0]) for key in f.keys()}
    return found


def test_a_store_without_budget_keeps_participants_in_memory():
    store = ClientStateStore()
    assert store.get(3) is None and len(store) == 0
    state = random_state(0)
    store.set(3, state)
    store.set(5, {})  # stateless strategies store nothing
    assert store.client_ids() == [3] and equal(store.get(3), state)
    assert store.directory is None and store.resident_bytes == state_bytes(state)  # nothing touched the disk


def test_states_beyond_the_budget_spill_and_read_back_equal(tmp_path):
    """Random cohorts over 60 clients, a budget of 4 states, checkpoints now and then: every state
    always reads back equal, RAM holds at most the budget, and the files stay near the live states."""
    one = state_bytes(random_state(0))
    store = ClientStateStore(4 * one, tmp_path / "states")
    reference, rng = {}, random.Random(0)
    for round_ in range(40):
        cohort = {cid: random_state(1000 * round_ + cid) for cid in rng.sample(range(60), 10)}
        store.update(cohort)
        reference.update(cohort)
        held = sum(state_bytes(s) for s in store._memory.values())
        assert held == store.resident_bytes <= 4 * one
        if round_ % 7 == 6:
            store.checkpointed(store.flush())
        files = segments(tmp_path / "states")
        assert sum(map(len, files.values())) <= 3 * len(reference) + 10
    assert store.client_ids() == sorted(reference) and len(store) == len(reference)
    got = store.get_many(range(70))
    assert got.keys() == reference.keys() and all(equal(got[cid], reference[cid]) for cid in reference)


def test_a_restored_store_reads_the_checkpointed_states_and_drops_later_files(tmp_path):
    one = state_bytes(random_state(0))
    first = ClientStateStore(2 * one, tmp_path)
    first.update({cid: random_state(cid) for cid in range(6)})
    index = first.flush()
    first.checkpointed(index)
    first.update({cid: random_state(100 + cid) for cid in range(4)})  # after the checkpoint: a crash loses these
    kept = set(segments(tmp_path))
    resumed = ClientStateStore(2 * one, tmp_path)
    resumed.restore(index)
    assert resumed.client_ids() == list(range(6)) and resumed.resident_bytes == 0
    assert all(equal(resumed.get(cid), random_state(cid)) for cid in range(6))
    resumed.update({7: random_state(7), 8: random_state(8), 9: random_state(9)})  # the first write cleans up
    referenced = {f"seg_{s:08d}.safetensors" for s in index.values()}
    assert referenced <= set(segments(tmp_path)) and not (kept - referenced) & set(segments(tmp_path))
