"""Evaluation sets and federated evaluation: a validation split of the train pool, each client's
stratified local test share, and the global model's accuracy per client and over clients."""

import csv

import numpy as np
import pytest
import torch
from torch import nn

from fedsim.checkpoint import prepare_run
from fedsim.config import load_config
from fedsim.data import load_dataset
from fedsim.data.holdout import split_validation
from fedsim.engine import Callback, Simulation
from fedsim.errors import ConfigError
from fedsim.evaluation import ClientTestSets
from fedsim.validate import validate
from fedsim.population import Holdouts
from tests.conftest import QUICKSTART, population_of, small_config

HELD_OUT = ("data.validation_fraction=0.1", "data.client_test_fraction=0.25")


def test_the_validation_split_is_a_stratified_seeded_share_of_the_train_pool():
    dataset = load_dataset("digits", seed=0)
    reduced, (x_val, y_val) = split_validation(dataset, 0.2, seed=3)
    _, y = dataset.tensors("train")
    _, y_left = reduced.tensors("train")
    assert len(y_left) + len(y_val) == len(y) and len(y_val) == len(y) - round(0.8 * len(y))
    assert np.abs(np.bincount(y_val.numpy()) / len(y_val) - np.bincount(y.numpy()) / len(y)).max() < 0.01
    again = split_validation(dataset, 0.2, seed=3)[1]
    assert torch.equal(again[0], x_val)
    assert split_validation(dataset, 0.0, seed=3) == (dataset, None)


def test_each_client_test_share_follows_its_own_labels_and_keeps_training_data():
    rng = np.random.default_rng(0)
    clients = [(rng.standard_normal((n, 2)), rng.choice(3, n, p=p)) for n, p in
               [(40, [0.8, 0.2, 0.0]), (30, [0.1, 0.1, 0.8]), (1, [1, 0, 0])]]
    population = population_of(clients, Holdouts(seed=0, client_test_fraction=0.25))
    for cid, (_, y) in enumerate(clients):
        client = population.client(cid)
        yt, ys = client.y, client.test[1]
        assert len(yt) >= 1 and len(yt) + len(ys) == len(y) and len(yt) == population.sizes[cid]
        assert sorted(torch.cat([yt, ys]).tolist()) == sorted(y.tolist())
        if len(y) > 1:  # stratified: the test share of every label is within one sample of 25%
            assert np.all(np.abs(np.bincount(ys.numpy(), minlength=3) - 0.25 * np.bincount(y, minlength=3)) <= 1)
    assert len(population.client(2).test[1]) == 0  # one sample: nothing to hold out


def test_client_scores_match_a_loop_over_clients():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    tests = [(torch.randn(n, 4), torch.randint(0, 3, (n,))) for n in (5, 0, 9, 2)]
    sets = ClientTestSets([0, 1, 2, 3], tests, torch.device("cpu"))
    scores = sets.score(model, dict(model.named_parameters()), batch=4)
    assert scores.client_ids.tolist() == [0, 2, 3]  # client 1 has no test data
    for i, cid in enumerate(scores.client_ids):
        x, y = tests[cid]
        with torch.no_grad():
            logits = model(x)
        assert scores.accuracy[i] == (logits.argmax(1) == y).double().mean().item()
        assert scores.loss[i] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-6)
    d = scores.distribution()
    assert d["client_accuracy_min"] == scores.accuracy.min()
    assert d["client_accuracy_weighted"] == pytest.approx((scores.accuracy * [5, 9, 2]).sum() / 16)


@pytest.mark.parametrize("vectorizes", [True, False], ids=["vmapped-chunks", "one-by-one"])
def test_personal_models_score_like_a_loop_over_clients(vectorizes):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    tests = [(torch.randn(n, 4), torch.randint(0, 3, (n,))) for n in (5, 1, 9, 2, 7)]
    sets = ClientTestSets(list(range(5)), tests, torch.device("cpu"))
    own = [{k: v.detach() + 0.3 * torch.randn_like(v) for k, v in model.named_parameters()} for _ in tests]
    sets.vectorizes = vectorizes
    scores = sets.score_each(model, own, batch=10)  # chunks of <= 10 padded samples: sizes {1, 2}, {5}, {7}, {9}
    assert sets.chunks(10) == [[1, 3], [0], [4], [2]]
    for i, ((x, y), params) in enumerate(zip(tests, own)):
        logits = torch.func.functional_call(model, params, (x,))
        assert scores.accuracy[i] == pytest.approx((logits.argmax(1) == y).double().mean().item(), abs=1e-12)
        assert scores.loss[i] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)


def test_a_model_that_fails_under_vmap_is_scored_one_client_at_a_time():
    class Branchy(nn.Linear):
        def forward(self, x):
            return super().forward(x) if x.sum().item() > -1e9 else x

    model = Branchy(4, 3)
    sets = ClientTestSets([0, 1], [(torch.randn(3, 4), torch.randint(0, 3, (3,)))] * 2, torch.device("cpu"))
    params = dict(model.named_parameters())
    scores = sets.score_each(model, [params, params], batch=100)
    assert sets.vectorizes is False and scores.accuracy[0] == scores.accuracy[1]


def client_rows(run) -> list[dict]:
    with open(run / "client_metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_run_records_validation_and_the_client_accuracy_distribution(tmp_path):
    sim = prepare_run(small_config(*HELD_OUT, "eval.clients=4"), tmp_path)
    summary = sim.run()
    record = sim.history.records[-1]
    assert 0 < record["val_accuracy"] <= 1 and summary["final_val_accuracy"] == record["val_accuracy"]
    assert record["client_accuracy_min"] <= record["client_accuracy_p10"] <= record["client_accuracy_mean"]
    assert summary["final_client_accuracy"]["mean"] == record["client_accuracy_mean"]
    rows = client_rows(tmp_path)
    assert len(rows) == 3 * 4 and len({r["client_id"] for r in rows}) == 4  # a fixed sample of 4 clients
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert "val_accuracy" in header and "client_accuracy_p10" in header


def test_without_held_out_data_nothing_changes():
    sim = Simulation(small_config())
    assert sim.validation is None and sim.client_test_sets is None and sim.diagnostic_columns == []


def test_federated_evaluation_is_the_same_on_vectorized_within_round_off(tmp_path):
    serial = Simulation(small_config(*HELD_OUT))
    serial.run()
    vectorized = Simulation(small_config(*HELD_OUT, "engine.backend=vectorized"))
    vectorized.run()
    a, b = serial.client_scores, vectorized.client_scores
    assert np.array_equal(a.client_ids, b.client_ids)
    assert np.allclose(a.loss, b.loss, atol=1e-5) and np.abs(a.accuracy - b.accuracy).max() <= 0.1


class Crash(Callback):
    def on_round_done(self, sim):
        if sim.round == 2:
            raise RuntimeError("simulated crash")


def test_a_resumed_run_writes_the_same_client_metrics(tmp_path):
    config = small_config(*HELD_OUT, "train.checkpoint_every=1", "train.rounds=4")
    prepare_run(config, tmp_path / "whole").run()
    with pytest.raises(RuntimeError):
        prepare_run(config, tmp_path / "resumed", [Crash()]).run()
    prepare_run(config, tmp_path / "resumed", resume=True).run()
    assert client_rows(tmp_path / "resumed") == client_rows(tmp_path / "whole")


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("data.validation_fraction=1", "data.validation_fraction must be in [0, 1)"),
        ("data.client_test_fraction=-0.1", "data.client_test_fraction must be in [0, 1)"),
    ],
)
def test_fractions_out_of_range_are_config_errors(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(QUICKSTART, [override])


def test_eval_clients_without_client_test_data_is_refused():
    with pytest.raises(ConfigError, match="set data.client_test_fraction > 0"):
        validate(small_config("eval.clients=5"))
