"""The client-state store: states beyond the memory budget spill to segment files and read back
exactly, RAM stays within the budget, checkpoints write only changed states, and runs with a tiny
budget equal unbounded ones bit for bit."""

import gc
import random
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from fedsim.checkpoint import STATES_DIR, load_checkpoint, prepare_run
from fedsim.client_state import ClientStateStore, state_bytes
from fedsim.engine import Callback, Simulation
from fedsim.errors import ConfigError
from tests.conftest import small_config

STATE_BYTES = 38440  # the quickstart MLP's parameters: one SCAFFOLD c_i, one Ditto personal model
TINY = f"engine.client_state_memory={2 * STATE_BYTES + 1}"  # two clients' states of a cohort of five
PERSONAL = ("data.client_test_fraction=0.25", "data.alpha=0.1")


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
            found[path.name] = {cid for key in f.keys() if key.endswith("/clients") for cid in f.get_tensor(key).tolist()}
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


def test_states_of_different_layouts_share_a_segment_and_views_are_not_kept_whole(tmp_path):
    chunk = torch.randn(10, 53)  # a vmapped chunk's stacked states: each client's row is a view
    states = {cid: {"c": {"w": chunk[cid, :50], "b": chunk[cid, 50:]}} for cid in range(9)}
    states[9] = {"c": {"w": torch.randn(50, dtype=torch.float64)}, "extra": {"n": torch.tensor(3)}}
    in_ram = ClientStateStore()
    in_ram.set(0, states[0])
    assert in_ram.get(0)["c"]["w"].untyped_storage().nbytes() == 50 * 4  # a copy of its row only
    store = ClientStateStore(1, tmp_path)  # below every state: all of them go to one segment
    store.update(states)
    assert store.resident_bytes == 0 and list(segments(tmp_path).values()) == [set(range(10))]
    got = store.get_many(range(10))
    assert all(equal(got[cid], states[cid]) for cid in range(10))


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


def test_without_a_run_folder_the_spill_is_a_temporary_directory_removed_with_the_run():
    sim = Simulation(small_config("strategy.name=scaffold", "train.fraction=0.5", TINY))
    sim.run()
    directory = sim.client_states.directory
    assert directory.parent == Path(tempfile.gettempdir()) and any(directory.iterdir())
    del sim
    gc.collect()
    assert not directory.exists()


def test_a_run_folder_holds_the_spill_and_keeps_only_what_its_checkpoint_references(tmp_path):
    for run, every in (("plain", 0), ("checkpointed", 2)):
        sim = prepare_run(small_config("strategy.name=scaffold", "train.fraction=0.5", "train.rounds=3", TINY,
                                       f"train.checkpoint_every={every}"), tmp_path / run)
        sim.run()
        assert sim.client_states.directory == tmp_path / run / STATES_DIR
        del sim
        gc.collect()
    assert not (tmp_path / "plain" / STATES_DIR).exists()
    config = small_config("strategy.name=scaffold", "train.fraction=0.5", "train.rounds=3", TINY, "train.checkpoint_every=2")
    index = load_checkpoint(tmp_path / "checkpointed", config).client_states
    assert set(segments(tmp_path / "checkpointed" / STATES_DIR)) == {f"seg_{s:08d}.safetensors" for s in index.values()}


class WithinBudget(Callback):
    """Checks after every round that the states in RAM add up to at most the budget."""

    def __init__(self, budget: int) -> None:
        self.budget, self.spilled = budget, 0

    def on_round_done(self, sim):
        store = sim.client_states
        held = sum(state_bytes(s) for s in store._memory.values())
        assert held == store.resident_bytes <= self.budget
        self.spilled = max(self.spilled, len(store) - len(store._memory))


@pytest.mark.parametrize(
    "overrides",
    [("strategy.name=scaffold", "train.fraction=0.5", "train.rounds=4"),
     (*PERSONAL, "trainer.name=ditto", "train.fraction=0.5", "train.rounds=4")],
    ids=["scaffold", "ditto"],
)
def test_a_tiny_budget_equals_an_unbounded_run_bit_for_bit(overrides):
    unbounded = Simulation(small_config(*overrides))
    unbounded.run()
    watch = WithinBudget(2 * STATE_BYTES + 1)
    bounded = Simulation(small_config(*overrides, TINY), [watch])
    bounded.run()
    assert watch.spilled > 0  # most states were on disk
    assert all(torch.equal(bounded.params[k], unbounded.params[k]) for k in unbounded.params)
    assert bounded.history.records[-1]["test_loss"] == unbounded.history.records[-1]["test_loss"]
    if "trainer.name=ditto" in overrides:
        assert bounded.history.records[-1]["personal_accuracy_mean"] == unbounded.history.records[-1]["personal_accuracy_mean"]
    assert bounded.client_states.client_ids() == unbounded.client_states.client_ids()
    for cid in unbounded.client_states.client_ids():
        assert equal(bounded.client_states.get(cid), unbounded.client_states.get(cid))


class SegmentWatch(Callback):
    """After each checkpoint: the files it added hold exactly the round's cohort, and no older file changed."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.files = directory, {}

    def on_round_done(self, sim):
        now = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in self.directory.glob("seg_*.safetensors")}
        assert all(now[name] == stamp for name, stamp in self.files.items() if name in now)
        added = {name: clients for name, clients in segments(self.directory).items() if name not in self.files}
        assert list(added.values()) == [set(sim.sample_clients(sim.round))]
        self.files = now


def test_a_checkpoint_writes_only_the_states_changed_since_the_last(tmp_path):
    config = small_config("strategy.name=scaffold", "train.fraction=0.3", "train.rounds=5", "train.checkpoint_every=1")
    sim = prepare_run(config, tmp_path)
    watch = SegmentWatch(tmp_path / STATES_DIR)
    sim.callbacks.append(watch)  # after the Checkpointer
    sim.run()
    assert len(sim.client_states) > 3


@pytest.mark.parametrize("value, message", [
    ("-1", r"^engine.client_state_memory must be >= 0, got -1$"),
    ("1000", r"^engine.client_state_memory = 1000 bytes cannot hold one client's state \(38440 bytes\); raise it, or set 0 for no bound$"),
])
def test_a_bad_budget_is_a_one_line_error(value, message):
    with pytest.raises(ConfigError, match=message):
        Simulation(small_config("strategy.name=scaffold", f"engine.client_state_memory={value}"))


@pytest.mark.parametrize("where, reason", [("a_file/states", "Not a directory"), ("a_file", "File exists")])
def test_an_unwritable_state_directory_is_a_one_line_error_before_any_data_is_loaded(tmp_path, monkeypatch, where, reason):
    (tmp_path / "a_file").write_text("x")
    monkeypatch.setattr("fedsim.engine.build_federation", lambda config: pytest.fail("loaded data first"))
    with pytest.raises(ConfigError) as err:
        Simulation(small_config("strategy.name=scaffold"), state_dir=tmp_path / where)
    assert f"is not writable ({reason}); use a writable --out" in str(err.value) and "\n" not in str(err.value)
