"""The federated benchmarks end to end on tiny copies in their hub schemas: every config of
experiments/benchmarks/ runs through the loader a user with the hub gets (`data.path`), the
Shakespeare LSTM and the FEMNIST CNN learn, and a copy in the wrong schema is one line."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from benchmarks import hub_copies
from fedsim.config import load_config
from fedsim.data import load_dataset
from fedsim.engine import Simulation
from fedsim.errors import ConfigError

BENCHMARKS = ("femnist", "shakespeare", "sent140", "cifar10", "cifar100")
ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "benchmarks"


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """Each copy in its hub schema, at sizes that keep a CI round to a few seconds."""
    root = tmp_path_factory.mktemp("hub")
    sizes = {
        "femnist": {"writers": 12},
        "shakespeare": {"roles": 6, "windows": (400, 500)},
        "cifar10": {"train": 300, "test": 100},
        "cifar100": {"train": 300, "test": 60},
    }
    return {name: write(root / name, **sizes.get(name, {})) for name, write in hub_copies.WRITERS.items()}


def simulation(name: str, copies, *settings: str) -> Simulation:
    base = [f"data.path={copies[name]}", "engine.device=cpu", "engine.threads=1"]  # one thread: CI's 2 cores are shared
    return Simulation(load_config(CONFIGS / f"{name}.toml", [*base, *settings]))


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_config_runs_on_its_tiny_copy(name, copies):
    # a round of two local steps with each config's data, model, task and backend
    settings = ["train.rounds=1", "train.local_steps=2", "train.batch_size=10", "train.checkpoint_every=0"]
    sim = simulation(name, copies, *settings, "train.clients_per_round=3", "train.fraction=0.03")
    summary = sim.run()
    assert summary["rounds"] == 1 and math.isfinite(sim.history.records[-1]["test_loss"])
    assert 0 <= summary["final_accuracy"] <= 1
    if sim.config.data.partitioner == "natural":  # num_clients = 0: one client per writer, role or user
        assert sim.config.data.num_clients == len(sim.population) == summary["num_clients"] > 1


def test_benchmark_tasks_shapes_and_vocabularies(copies):
    femnist = load_dataset("femnist", seed=0, num_clients=0, path=str(copies["femnist"]), test_fraction=0.1)
    assert femnist.num_classes == 62 and femnist.input_shape == (1, 28, 28) and femnist.vocab_size == 0
    shakespeare = load_dataset("shakespeare", seed=0, num_clients=0, path=str(copies["shakespeare"]))
    x, y = shakespeare.tensors("train")
    assert x.dtype == torch.int64 and x.shape[1:] == (80,) and y.shape[1:] == (80,)
    assert torch.equal(y[:, :-1], x[:, 1:])  # each position's target is the next character
    assert shakespeare.num_classes == shakespeare.vocab_size == 81
    sent = load_dataset("sent140", seed=0, num_clients=0, path=str(copies["sent140"]), sequence_length=12, vocabulary=50)
    x, y = sent.tensors("train")
    assert x.shape[1:] == (12,) and set(y.unique().tolist()) <= {0, 1} and sent.vocab_size == 52  # + [PAD], [UNK]
    cifar = load_dataset("cifar100", seed=0, num_clients=1, path=str(copies["cifar100"]))
    x, _ = cifar.tensors("train")
    assert cifar.num_classes == 100 and x.shape[1:] == (3, 32, 32)
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)  # standardised by the train split
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=1e-3)


def test_shakespeare_lstm_beats_the_most_frequent_character(copies):
    # the config's LSTM (embedding 8, two layers) at width 64 instead of 256, so 3 rounds fit in CI
    sim = simulation(
        "shakespeare", copies, "train.rounds=3", "train.eval_every=3", "train.clients_per_round=6", "train.lr=4.0",
        "model.hidden=64",
    )
    summary = sim.run()
    targets = sim.y_test.flatten()
    baseline = float(torch.bincount(targets).max()) / len(targets)  # always predicting the space: 0.20
    assert summary["final_accuracy"] > baseline + 0.15, (summary["final_accuracy"], baseline)  # measured: 0.44


def test_femnist_cnn_learns_above_chance(tmp_path):
    # LEAF's CNN on 10 writers of a copy drawing 10 of the 62 characters without per-sample jitter:
    # 2 writers a round, 8 local epochs, so 4 rounds take ~100 sequential SGD steps
    path = hub_copies.write_femnist(tmp_path / "femnist", writers=10, samples=(30, 40), classes=10, jitter=0)
    settings = [
        f"data.path={path}", "engine.device=cpu", "engine.threads=1", "engine.backend=serial", "data.test_fraction=0.3",
        "train.rounds=4", "train.eval_every=4", "train.lr=0.05", "train.local_epochs=8", "train.clients_per_round=2",
    ]
    summary = Simulation(load_config(CONFIGS / "femnist.toml", settings)).run()
    assert summary["final_accuracy"] > 3 / 10, summary["final_accuracy"]  # 10 characters drawn; measured: 0.50


def test_sequence_targets_train_the_same_vectorized_as_serial(copies, tmp_path):
    # a per-position model that vmaps (an embedding and a linear layer), on clients of unequal
    # sizes: the vectorized backend pads their batches, each padded row padding all its positions
    plugin = tmp_path / "bigram.py"
    plugin.write_text(
        "from dataclasses import dataclass\nfrom typing import ClassVar\nfrom torch import nn\n"
        "from fedsim.models import Model\n\n"
        "@dataclass\nclass Bigram(Model):\n    name: ClassVar[str] = 'bigram'\n    inputs: ClassVar[str] = 'tokens'\n"
        "    vocab_size: int = 0\n\n"
        "    def build(self, input_shape, num_classes):\n"
        "        return nn.Sequential(nn.Embedding(self.vocab_size, 16), nn.Linear(16, num_classes))\n"
    )
    settings = [f'model={{name="{plugin}:Bigram"}}', "train.rounds=2", "train.clients_per_round=4", "train.batch_size=32"]
    serial, vectorized = (
        simulation("shakespeare", copies, *settings, f"engine.backend={backend}") for backend in ("serial", "vectorized")
    )
    serial.run(), vectorized.run()
    for a, b in zip(serial.history.records, vectorized.history.records):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-5)
        assert b["test_accuracy"] == pytest.approx(a["test_accuracy"], abs=1e-6)


def _rewritten(copies, tmp_path, name: str, change) -> str:
    splits = datasets.load_from_disk(str(copies[name]))
    path = tmp_path / f"bad_{name}"
    datasets.DatasetDict({k: change(v) for k, v in splits.items()}).save_to_disk(str(path))
    return str(path)


@pytest.mark.parametrize(
    "name, change, message",
    [
        ("femnist", lambda d: d.remove_columns("writer_id"), "has no column 'writer_id'; columns: image \\(Image\\), hsf_id"),
        ("femnist", lambda d: d.remove_columns("character"), "has no column 'character'; columns: image \\(Image\\)"),
        (
            "femnist",
            lambda d: d.cast_column("character", datasets.Value("string")),
            "column 'character' must hold class labels .datasets.ClassLabel., not string",
        ),
        ("shakespeare", lambda d: d.rename_column("x", "text"), "has no column 'x'; columns: character_id"),
        ("cifar10", lambda d: d.rename_column("img", "image"), "has no column 'img'; columns: image \\(Image\\)"),
    ],
)
def test_a_copy_in_the_wrong_schema_is_one_line_naming_the_columns(copies, tmp_path, name, change, message):
    path = _rewritten(copies, tmp_path, name, change)
    with pytest.raises(ConfigError, match=message):
        load_dataset(name, seed=0, num_clients=0, path=path)


def test_the_schema_refusal_is_one_line_and_exit_2_from_the_cli(copies, tmp_path):
    path = _rewritten(copies, tmp_path, "sent140", lambda d: d.remove_columns("sentiment"))
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", f"{CONFIGS}/sent140.toml", "--set", f"data.path={path}", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "COLUMNS": "400"},
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "has no column 'sentiment'" in lines[0] and "user (string)" in lines[0]


def test_client_fraction_keeps_a_share_of_the_writers(copies):
    full = load_dataset("femnist", seed=0, num_clients=0, path=str(copies["femnist"]))
    share = load_dataset("femnist", seed=0, num_clients=0, path=str(copies["femnist"]), client_fraction=0.5)
    writers = len(np.unique(full.train["client_id"]))
    assert len(np.unique(share.train["client_id"])) == writers // 2
    assert len(share.train) < len(full.train)
