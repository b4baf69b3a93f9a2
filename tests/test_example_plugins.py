"""The installable plugin package in examples/plugins adds a client trainer, a model and a dataset
without touching fedsim, and every backend runs them: serial == ray bit for bit, vectorized within
relative 1e-5, flower == serial bit for bit."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from fedsim import tree
from fedsim.gradients import autograd_grad_fn
from fedsim.plugins import trainer_class
from fedsim.schedule import LocalSchedule, batch_seeds, client_batches
from fedsim.strategy import LocalContext, Strategy
from tests.conftest import QUICKSTART, ROOT, train_one

PLUGINS = ROOT / "examples" / "plugins"


@pytest.fixture(scope="module", autouse=True)
def installed():
    """Install the example package into the test environment, as a user would (`pip install`)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--force-reinstall",
         str(PLUGINS)],
        check=True, capture_output=True,
    )
    importlib.invalidate_caches()


def test_local_adam_is_torch_adam_whose_moments_persist_across_rounds():
    local_adam = trainer_class("local_adam")()
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    schedule, strategy, lr = LocalSchedule(epochs=1, steps=0, batch_size=5), Strategy(), 0.01
    grad_fn = autograd_grad_fn(model, strategy.objective)
    starts = [tree.clone(dict(model.named_parameters())), {k: torch.randn_like(v) for k, v in model.named_parameters()}]

    state, ends = local_adam.init_state(starts[0]), []
    for round_, start in enumerate(starts, 1):
        update = train_one(strategy, grad_fn, (x, y), LocalContext(start, {}, {}, lr, 0), schedule,
                           round_=round_, trainer=local_adam, trainer_state=state)
        state = update.trainer_state
        ends.append(tree.sub(start, update.upload["delta"]))

    reference = nn.Linear(4, 3)
    adam = torch.optim.Adam(reference.parameters(), lr=lr)
    for round_, (start, end) in enumerate(zip(starts, ends), 1):
        with torch.no_grad():  # the round starts from the global model; Adam's moments carry on
            for name, p in reference.named_parameters():
                p.copy_(start[name])
        for idx in client_batches(12, 3, 5, int(batch_seeds(0, "shuffle", round_, [0])[0])):
            adam.zero_grad()
            nn.functional.cross_entropy(reference(x[idx]), y[idx]).backward()
            adam.step()
        for name, p in reference.named_parameters():
            torch.testing.assert_close(end[name], p.detach(), rtol=1e-5, atol=1e-6)
    assert float(state["t"]["t"]) == 6


def test_the_plugin_model_and_dataset_are_what_they_say():
    from fedsim_example_plugins.datasets import Blobs
    from fedsim_example_plugins.models import ResidualMLP

    from fedsim.config import DataConfig

    bundle = Blobs().load(DataConfig(samples=500, test_fraction=0.2), seed=3)
    x, y = bundle.tensors("train")
    assert (len(y), len(bundle.tensors("test")[1]), bundle.input_shape, bundle.num_classes) == (400, 100, (16,), 10)
    assert torch.equal(x, Blobs().load(DataConfig(samples=500, test_fraction=0.2), seed=3).tensors("train")[0])
    model = ResidualMLP(width=8, depth=3).build(bundle.input_shape, bundle.num_classes)
    assert model(x[:5]).shape == (5, 10) and sum(isinstance(m, nn.Linear) for m in model.modules()) == 5


PLUGIN_RUN = [
    "data.dataset=blobs", "data.samples=600", "data.num_clients=6", "model={name='residual_mlp', width=16}",
    "trainer.name=local_adam", "strategy.name=scaffold", "train.rounds=2", "train.fraction=0.5",
    "train.local_epochs=1", "train.lr=0.01", "engine.device=cpu",
]


def run_cli(tmp_path, backend: str, *extra: str) -> dict[str, torch.Tensor]:
    """The final weights of a CLI run of the three plugins, training with one torch thread per
    client everywhere (a Ray worker with one CPU, a Flower actor), so serial, ray and flower can
    agree to the bit."""
    out = tmp_path / backend
    args = [sys.executable, "-m", "fedsim.cli", "run", str(QUICKSTART), "-q", "-o", str(out)]
    for override in [*PLUGIN_RUN, f"engine.backend={backend}", *extra]:
        args += ["--set", override]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return load_file(out / "model.safetensors")


def test_the_plugins_run_from_the_cli_on_every_backend(tmp_path):
    serial = run_cli(tmp_path, "serial")
    ray = run_cli(tmp_path, "ray", "engine.workers=2", "engine.cpus_per_worker=1")
    assert all(torch.equal(serial[k], ray[k]) for k in serial)
    vectorized = run_cli(tmp_path, "vectorized")
    for k in serial:
        assert float((vectorized[k] - serial[k]).norm() / serial[k].norm()) <= 1e-5
    flower = run_cli(tmp_path, "flower")
    assert all(torch.equal(serial[k], flower[k]) for k in serial)
