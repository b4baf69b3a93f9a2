"""Shared fixtures: small, fast configs built from the quickstart."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsim.config import load_config

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "experiments" / "quickstart.toml"


def small_config(*overrides: str):
    """The quickstart shrunk to a few seconds: 10 clients, 3 rounds, 1 local epoch."""
    base = ["data.num_clients=10", "train.rounds=3", "train.local_epochs=1", "engine.device=cpu"]
    return load_config(QUICKSTART, [*base, *overrides])


@pytest.fixture
def config_factory():
    return small_config
