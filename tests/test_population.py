"""Populations: clients materialised on demand are the same whoever asks, sized before they exist,
and a generated population of millions costs only what a round touches."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from fedsim.config import load_config
from fedsim.engine import Simulation
from fedsim.errors import ConfigError
from fedsim.federation import build_population
from fedsim.population import GeneratedPopulation, Holdouts
from tests.conftest import population_of, small_config

SYNTHETIC = [
    "data.dataset=synthetic", "data.partitioner=natural", "data.num_clients=40", "data.test_clients=10",
    "train.clients_per_round=8", "train.rounds=2", "train.local_epochs=1", "model.hidden=[16]",
    "engine.device=cpu", "engine.threads=1",
]


def synthetic_config(*overrides: str):
    return load_config(None, [*SYNTHETIC, *overrides])


@pytest.mark.parametrize("test_fraction, label_ratio", [(0.0, 1.0), (0.3, 1.0), (0.0, 0.2), (0.25, 0.5)])
def test_sizes_are_known_before_any_client_is_made(test_fraction, label_ratio):
    rng = np.random.default_rng(0)
    clients = [(rng.standard_normal((n, 2)), rng.integers(0, 3, n)) for n in (1, 2, 3, 7, 10, 41)]
    population = population_of(clients, Holdouts(0, test_fraction, label_ratio))
    assert [len(population.client(cid).y) for cid in range(len(clients))] == population.sizes.tolist()


def test_a_client_is_the_same_on_every_call_and_gather_concatenates_in_order():
    sim_population = build_population(small_config("data.client_test_fraction=0.2", "data.label_ratio=0.5"))
    a, b = sim_population.client(3), sim_population.client(3)
    for field in ("x", "y", "unlabelled", "hidden"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    x, y = sim_population.gather([5, 2], torch.device("cpu"))
    assert torch.equal(x, torch.cat([sim_population.client(5).x, sim_population.client(2).x]))
    assert torch.equal(y, torch.cat([sim_population.client(5).y, sim_population.client(2).y]))


def test_an_indexed_population_ships_its_arrays_and_not_its_device_copies():
    population = build_population(small_config())
    population.client(0)  # moves the train split "to the CPU" once, as a cache
    shipped = pickle.loads(pickle.dumps(population))
    assert shipped._on == {} and torch.equal(shipped.client(4).x, population.client(4).x)


def test_a_generated_population_makes_only_the_clients_it_is_asked_for():
    config = synthetic_config("data.num_clients=10000000", "data.test_clients=5")
    population = build_population(config)
    assert isinstance(population, GeneratedPopulation) and len(population) == 10_000_000
    assert len(population.test_clients) == 5
    assert len(population.test[1]) == int(population.num_test[population.test_clients].sum())
    last = population.client(9_999_999)
    assert len(last.y) == population.sizes[-1] and last.x.shape[1:] == (60,)
    # the same client of a smaller population of the same seed: made from (seed, id) alone
    small = build_population(synthetic_config("data.num_clients=40"))
    assert torch.equal(small.client(7).x, population.client(7).x)


def test_a_synthetic_run_is_the_same_on_serial_and_vectorized_and_checkpoints_by_client():
    serial = Simulation(synthetic_config("strategy.name=scaffold"))
    serial.run()
    vectorized = Simulation(synthetic_config("strategy.name=scaffold", "engine.backend=vectorized"))
    vectorized.run()
    for name, value in serial.params.items():
        assert torch.allclose(value, vectorized.params[name], atol=1e-5)
    assert len(serial.client_states.flush()) == len({c for r in (1, 2) for c in serial.sample_clients(r)})
    assert serial.heterogeneity()["clients"] == 10  # measured on the central test clients


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("data.partitioner=dirichlet", "set data.partitioner='natural', not 'dirichlet'"),
        ("data.num_clients=0", "generates as many clients as asked: set data.num_clients >= 1"),
        ("data.validation_fraction=0.1", "set data.validation_fraction=0"),
    ],
)
def test_what_a_generated_population_cannot_take_is_one_line(override, fragment):
    with pytest.raises(ConfigError) as err:
        Simulation(synthetic_config(override))
    assert fragment in str(err.value) and "\n" not in str(err.value)


CENTRES = '''
import numpy as np
from fedsim import seeding
from fedsim.data import Dataset
from fedsim.data.datasets import DatasetInfo

class Centres(Dataset):
    """Each client's samples around a centre of its own."""
    generates_clients = True

    def client_sizes(self, data, seed):
        return seeding.numpy_rng(seed, "centre_sizes").integers(20, 200, data.num_clients)

    def client_data(self, data, seed, client_id, size):
        rng = seeding.numpy_rng(seed, "centres", client_id)
        y = rng.integers(0, 2, size)
        x = rng.normal(y[:, None] + rng.normal(0, 1, 8), 1.0).astype(np.float32)
        return x, y

    def info(self, data):
        return DatasetInfo("centres", num_classes=2, input_shape=(8,))
'''


def test_a_plugin_generates_a_population_as_the_docs_show(tmp_path):
    (tmp_path / "centres.py").write_text(CENTRES)
    sim = Simulation(synthetic_config(f"data.dataset={tmp_path / 'centres.py'}:Centres", "train.rounds=3", "train.lr=0.5"))
    summary = sim.run()
    assert sim.population.input_shape == (8,) and summary["final_accuracy"] > 0.6
