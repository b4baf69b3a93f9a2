import json

import pandas as pd
import pytest
import torch

from fedsim.cohort import cohort_size
from fedsim.engine import Simulation
from fedsim.errors import ConfigError, TrainingDiverged
from fedsim.plugins import resolved
from fedsim.models import build_model
from fedsim.results import RunFolder, load_weights
from tests.conftest import QUICKSTART
from fedsim.config import load_config


def _run(config, tmp_path=None):
    callbacks = [RunFolder(tmp_path)] if tmp_path else []
    sim = Simulation(config, callbacks)
    return sim, sim.run()


def test_quickstart_reaches_90_percent():
    sim, summary = _run(load_config(QUICKSTART, ["engine.device=cpu"]))
    assert summary["rounds"] == 30
    assert summary["final_accuracy"] >= 0.90


def test_stronger_label_skew_is_worse():
    _, mild = _run(load_config(QUICKSTART, ["engine.device=cpu", "train.rounds=10"]))
    _, harsh = _run(load_config(QUICKSTART, ["engine.device=cpu", "train.rounds=10", "data.alpha=0.05"]))
    assert harsh["heterogeneity"]["label_tv"] > mild["heterogeneity"]["label_tv"]
    assert harsh["final_accuracy"] < mild["final_accuracy"]


def test_rerun_is_bit_identical(config_factory, tmp_path):
    config = config_factory("train.fraction=0.5")
    a, sa = _run(config, tmp_path / "a")
    b, sb = _run(config, tmp_path / "b")
    assert a.history.accuracies() == b.history.accuracies()
    wa, wb = load_weights(tmp_path / "a"), load_weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    other, _ = _run(config_factory("train.fraction=0.5", "seed=1"))
    assert any(not torch.equal(a.params[k], other.params[k]) for k in a.params)


def test_run_folder_contents(config_factory, tmp_path):
    sim, summary = _run(config_factory(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.toml", "metrics.csv", "model.safetensors", "partition.csv", "summary.json",
    ]
    assert load_config(tmp_path / "config.toml") == resolved(sim.config)  # every default written out
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics["round"]) == [1, 2, 3]
    for column in ("test_accuracy", "test_loss", "train_loss", "num_clients", "wall_s"):
        assert column in metrics
    saved = json.loads((tmp_path / "summary.json").read_text())
    for key in ("final_accuracy", "best_accuracy", "rounds", "wall_s", "seed", "strategy", "dataset", "alpha"):
        assert key in saved
    assert saved["final_accuracy"] == metrics["test_accuracy"].iloc[-1]
    partition = pd.read_csv(tmp_path / "partition.csv")
    assert len(partition) == 10 and partition["num_samples"].sum() == len(sim.population.train[1])
    model = build_model(sim.config.model, sim.population.input_shape, sim.population.num_classes, sim.config.seed)
    model.load_state_dict(load_weights(tmp_path))  # safetensors: no unpickling


def test_eval_every_and_last_round_always_evaluated(config_factory):
    sim, _ = _run(config_factory("train.rounds=5", "train.eval_every=2"))
    assert [r["round"] for r in sim.history.records] == [2, 4, 5]


def test_sampling_is_seeded_sized_and_sorted(config_factory):
    sim = Simulation(config_factory("train.fraction=0.3"))
    cohorts = [sim.sample_clients(r) for r in range(1, 6)]
    assert all(len(c) == 3 and c == sorted(c) for c in cohorts)
    assert cohorts == [Simulation(config_factory("train.fraction=0.3")).sample_clients(r) for r in range(1, 6)]
    assert len({tuple(c) for c in cohorts}) > 1
    assert cohort_size(100, 0.57) == 57 and cohort_size(10, 0.01) == 1


def test_dropout_and_partial_work(config_factory):
    sim = Simulation(config_factory("train.dropout=0.5", "train.min_local_work=0.2"))
    assert all(len(sim.sample_clients(r)) == 5 for r in range(1, 4))
    works = [sim.local_work(1, c) for c in range(10)]
    assert all(0.2 <= w <= 1 for w in works) and len(set(works)) == 10
    summary = sim.run()
    assert summary["status"] == "finished" and sim.history.records[-1]["num_clients"] == 5


def test_divergence_names_round_and_client_and_keeps_metrics(config_factory, tmp_path):
    sim = Simulation(config_factory("train.lr=1e30", "train.rounds=5"), [RunFolder(tmp_path)])
    with pytest.raises(TrainingDiverged, match=r"client \d+ had loss (nan|inf) in round \d"):
        sim.run()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "diverged" in summary["error"]
    assert (tmp_path / "metrics.csv").exists()


def test_more_clients_than_samples_is_a_config_error(config_factory):
    with pytest.raises(ConfigError, match="client"):
        Simulation(config_factory("data.num_clients=5000"))
