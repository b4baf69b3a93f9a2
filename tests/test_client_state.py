import pytest
import torch

from fedsim.client_state import ClientStateStore


@pytest.mark.parametrize("on_disk", [False, True])
def test_store_keeps_only_participants_and_round_trips(tmp_path, on_disk):
    store = ClientStateStore(tmp_path / "states" if on_disk else None)
    assert store.get(3) is None and len(store) == 0
    state = {"c": {"w": torch.arange(4.0), "b": torch.ones(1)}}
    store.set(3, state)
    store.set(5, {})  # stateless strategies store nothing
    assert store.client_ids() == [3]
    got = store.get(3)
    assert torch.equal(got["c"]["w"], state["c"]["w"]) and torch.equal(got["c"]["b"], state["c"]["b"])
    if on_disk:
        assert (tmp_path / "states" / "client_3.safetensors").exists()
