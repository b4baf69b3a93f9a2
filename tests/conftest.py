"""Shared fixtures: small, fast configs built from the quickstart."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from fedsim.config import load_config
from fedsim.local import ClientJob, ClientUpdate, LocalEnv
from fedsim.schedule import LocalSchedule, batch_seeds, client_batches
from fedsim.strategy import LocalContext, Strategy
from fedsim.trainer import ClientTrainer

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "experiments" / "quickstart.toml"
_EXIT_STATUS = pytest.StashKey[int]()


def small_config(*overrides: str):
    """The quickstart shrunk to a few seconds: 10 clients, 3 rounds, 1 local epoch."""
    base = ["data.num_clients=10", "train.rounds=3", "train.local_epochs=1", "engine.device=cpu"]
    return load_config(QUICKSTART, [*base, *overrides])


def population_of(clients, holdouts):
    """An `IndexedPopulation` whose client k holds `clients[k]` (numpy (x, y)), split as `holdouts` says."""
    import numpy as np

    from fedsim.data import DatasetBundle, Partition
    from fedsim.population import IndexedPopulation

    x = np.concatenate([cx for cx, _ in clients]).astype(np.float32)
    y = np.concatenate([cy for _, cy in clients])
    bounds = np.cumsum([0] + [len(cy) for _, cy in clients])
    bundle = DatasetBundle.from_arrays("clients", (x, y), (x[:1], y[:1]), int(y.max()) + 1)
    return IndexedPopulation(bundle, Partition([np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]), holdouts)


def train_one(
    strategy: Strategy,
    grad_fn,
    data: tuple[torch.Tensor, torch.Tensor],
    ctx: LocalContext,
    schedule: LocalSchedule,
    *,
    client_id: int = 0,
    round_: int = 1,
    seed: int = 0,
    work: float = 1.0,
    trainer: ClientTrainer | None = None,
    trainer_state=None,
    model=None,
    unlabelled: torch.Tensor | None = None,
) -> ClientUpdate:
    """One client's round by hand, as the serial executor runs it (plain backprop by default)."""
    x, y = data
    steps = schedule.num_steps(len(y), work)
    seeds = batch_seeds(seed, "shuffle", round_, [client_id])
    job = ClientJob(
        client_id, round_, ctx.lr, ctx.global_params, ctx.broadcast, ctx.client_state, trainer_state or {},
        data, client_batches(len(y), steps, schedule.batch_size, int(seeds[0])),
        unlabelled if unlabelled is not None else x[:0], work,
    )
    trainer = trainer or ClientTrainer()
    return trainer.train(job, LocalEnv(strategy, model, grad_fn, schedule, seed))


@pytest.fixture
def config_factory():
    return small_config


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


def pytest_unconfigure(config):
    """Leave with pytest's own exit status, skipping interpreter teardown.

    After every test has passed and the summary is printed, the interpreter's final teardown of
    the libraries the suite loads (Ray, Flower, torch) has crashed with a segmentation fault, which
    would turn a green run into a failed one. Nothing the tests check happens after this point.
    """
    if _EXIT_STATUS in config.stash:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[_EXIT_STATUS])
