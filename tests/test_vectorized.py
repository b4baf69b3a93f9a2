"""The vectorized backend trains like serial (up to float rounding), reruns identically, refuses what it cannot run."""

from __future__ import annotations

import platform
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedsim import tree
from fedsim.backends import make_backend
from fedsim.backends.base import Task
from fedsim.backends.chunk import is_sample_mean
from fedsim.backends.serial import SerialBackend
from fedsim.backends.vectorized import VectorizedBackend, auto_backend, keep_freed_memory
from fedsim.config import load_config
from fedsim.engine import Simulation
from fedsim.errors import ConfigError, TrainingDiverged
from fedsim.plugins import available_strategies, available_trainers, strategy_class, trainer_class
from fedsim.population import Holdouts
from fedsim.schedule import LocalSchedule
from fedsim.trainer import ClientTrainer
from fedsim.validate import validate
from strategies.fedavg import FedAvg
from strategies.fedld import FedLD
from tests.conftest import QUICKSTART, population_of

# unequal client sizes (Dirichlet), half the clients per round, a random share of local steps,
# batches of 16 so clients end epochs on short batches
UNEQUAL = [
    "data.num_clients=12",
    "train.fraction=0.5",
    "train.min_local_work=0.5",
    "train.rounds=3",
    "train.local_epochs=2",
    "train.batch_size=16",
    "train.lr=0.1",
    "engine.device=cpu",
]


def config(*overrides: str):
    return load_config(QUICKSTART, [*UNEQUAL, *overrides])


def final_params(*overrides: str) -> dict[str, torch.Tensor]:
    sim = Simulation(config(*overrides))
    sim.run()
    return sim.params


def run_rounds(sim: Simulation, backend, rounds: int) -> dict[str, torch.Tensor]:
    """Drive `rounds` rounds of `sim` on a backend built outside the engine."""
    for round_ in range(1, rounds + 1):
        plan = sim.plan_round(round_)
        sim.apply_round(plan, backend.run_round(plan))
    return sim.params


def assert_close_relative(got: dict, want: dict, tolerance: float = 1e-5) -> None:
    for name, value in want.items():
        difference, size = float((got[name] - value).norm()), float(value.norm())
        assert difference <= tolerance * size + 1e-7, f"{name}: error {difference:.2e} of norm {size:.2e}"


@pytest.mark.parametrize("name", sorted(available_strategies()))
def test_every_strategy_matches_serial(name):
    serial = final_params(f"strategy.name={name}")
    vectorized = final_params(f"strategy.name={name}", "engine.backend=vectorized")
    assert_close_relative(vectorized, serial)


@pytest.mark.parametrize("name", sorted(available_trainers()))
def test_every_trainer_matches_serial_or_is_refused_before_any_work(name):
    norm = "batch" if trainer_class(name).keeps_statistics else "none"  # FedBN needs BatchNorm
    overrides = [f"trainer.name={name}", "data.label_ratio=0.5", f"model={{name='cnn', channels=[8, 8], norm='{norm}'}}"]
    if not trainer_class(name).vectorizes:
        with pytest.raises(ConfigError, match="one client at a time.*set engine.backend=serial"):
            validate(config(*overrides, "engine.backend=vectorized"))
        return
    serial = final_params(*overrides)
    vectorized = final_params(*overrides, "engine.backend=vectorized")
    assert_close_relative(vectorized, serial)


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.momentum=0.9", "train.weight_decay=0.01", "train.clip_norm=0.5"],
        ["strategy.name=scaffold", "train.momentum=0.5", "train.clip_norm=0.5"],
        ["strategy.name=fedspeed", "strategy.variant=fl_simulator"],
        ["strategy.name=fedld", "strategy.margin_norm=sample"],  # a padded objective other than cross-entropy
        ["train.local_steps=7", "train.batch_size=8"],
    ],
    ids=["sgd-options", "scaffold-momentum", "fedspeed-fl-simulator", "fedld-sample", "fixed-steps"],
)
def test_matches_serial_with_local_optimiser_options(overrides):
    assert_close_relative(final_params(*overrides, "engine.backend=vectorized"), final_params(*overrides))


def test_rerun_is_bit_identical():
    a = final_params("strategy.name=scaffold", "engine.backend=vectorized")
    b = final_params("strategy.name=scaffold", "engine.backend=vectorized")
    assert all(torch.equal(a[k], b[k]) for k in a)


@dataclass
class StepBranchingFedAvg(FedAvg):
    """FedAvg whose upload depends on a Python branch on the step count: needs int summaries."""

    def client_end(self, params, carry, ctx, summary):
        upload, state = super().client_end(params, carry, ctx, summary)
        factor = 2.0 if summary.num_steps > 3 else 1.0
        return {"delta": tree.scale(upload["delta"], factor)}, state


def test_client_end_is_one_vmapped_call_or_runs_per_group_of_equal_counts():
    name = "strategy.name=tests.test_vectorized:StepBranchingFedAvg"
    assert_close_relative(final_params(name, "engine.backend=vectorized"), final_params(name))
    sim = Simulation(config(name))
    backend = VectorizedBackend(sim.task)
    run_rounds(sim, backend, rounds=1)
    assert not backend.executor.tensor_summaries  # the branch failed under vmap once: groups from then on
    sim = Simulation(config("strategy.name=scaffold"))  # divides by the step count: tensors serve
    backend = VectorizedBackend(sim.task)
    run_rounds(sim, backend, rounds=1)
    assert backend.executor.tensor_summaries


def test_chunks_give_the_result_of_one_chunk():
    def params(max_clients: int) -> dict[str, torch.Tensor]:
        sim = Simulation(config("strategy.name=fedld", "train.fraction=1.0"))
        return run_rounds(sim, VectorizedBackend(sim.task, max_clients), rounds=2)

    whole = params(0)
    assert_close_relative(params(5), whole, tolerance=1e-6)
    assert_close_relative(params(1), whole, tolerance=1e-6)


def test_sample_mean_probe_tells_cross_entropy_from_fedlds_batch_margin():
    assert is_sample_mean(F.cross_entropy, 10)
    assert is_sample_mean(FedLD(margin_norm="sample").objective, 10)
    assert not is_sample_mean(FedLD(margin_norm="batch").objective, 10)


def test_divergence_names_the_round_and_client_serial_names():
    overrides = ("train.lr=1e30", "train.fraction=1.0")
    errors = []
    for backend in ("serial", "vectorized"):
        with pytest.raises(TrainingDiverged) as info:
            Simulation(config(*overrides, f"engine.backend={backend}")).run()
        errors.append((info.value.round, info.value.client_id))
    assert errors[0] == errors[1]


class DataDependent(nn.Module):
    """A layer that branches on a tensor's value, which vmap cannot do."""

    def forward(self, x):
        return x if x.sum().item() > 0 else -x


def unvectorizable_task() -> Task:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    clients = population_of([(rng.standard_normal((8, 4)), rng.integers(0, 3, 8)) for _ in range(3)], Holdouts(0))
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), DataDependent(), nn.Linear(8, 3))
    schedule = LocalSchedule(epochs=1, steps=0, batch_size=4)
    return Task(0, model, strategy_class("fedavg")(), ClientTrainer(), clients, schedule, torch.device("cpu"))


def test_unvectorizable_model_is_one_config_error_naming_the_layer():
    with pytest.raises(ConfigError) as info:
        VectorizedBackend(unvectorizable_task())
    message = str(info.value)
    assert "layer '2' (DataDependent)" in message and "engine.backend=serial" in message
    assert "\n" not in message


def test_memory_tracking_is_refused_and_auto_meters_on_serial():
    with pytest.raises(ConfigError, match="track_memory.*use engine.backend=serial"):
        Simulation(config("engine.track_memory=true", "engine.backend=vectorized")).run()
    sim = Simulation(config("engine.track_memory=true", "engine.backend=auto"))
    assert isinstance(auto_backend(sim.task), SerialBackend)


def test_auto_takes_vectorized_for_small_models_and_serial_otherwise():
    small = Simulation(config("engine.backend=auto"))
    assert isinstance(make_backend("auto", small.task), VectorizedBackend)
    wide = Simulation(config("engine.backend=auto", "model.hidden=[4096,4096]"))
    assert isinstance(auto_backend(wide.task), SerialBackend)
    assert isinstance(auto_backend(unvectorizable_task()), SerialBackend)


def test_max_clients_per_batch_must_not_be_negative():
    with pytest.raises(ConfigError, match="engine.max_clients_per_batch"):
        validate(config("engine.max_clients_per_batch=-1"))


def test_freed_memory_is_kept_for_reuse_where_malloc_is_glibcs():
    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")


@pytest.mark.parametrize(
    "table, shape",
    [({"name": "mlp", "hidden": [64, 32]}, (8, 8)), ({"name": "cnn"}, (1, 40)), ({"name": "cnn"}, (3, 16, 16)),
     ({"name": "resnet18_gn"}, (3, 32, 32))],
    ids=["mlp", "cnn1d", "cnn2d", "resnet18"],
)
def test_forward_flops_counts_what_torchs_flop_counter_counts(table, shape):
    from torch.utils.flop_counter import FlopCounterMode

    from fedsim.backends.vectorized import forward_flops
    from fedsim.models import build_model

    model, x = build_model(table, shape, 10, seed=0), torch.zeros(2, *shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    assert forward_flops(model, x) == counter.get_total_flops()
