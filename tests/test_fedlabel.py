"""FedLabel and label scarcity: the label split, the semi-supervised client, each switch, the run."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from benchmarks import fedlabel as fedlabel_benchmark
from clients.fedlabel import FedLabel
from clients.semi_supervised import PSEUDO_LABEL_COLUMNS, augment, pseudo_label_metrics
from fedsim.backends import make_backend
from fedsim.backends.base import ClientReport
from fedsim.cli import app
from fedsim.config import load_config
from fedsim.data.labels import labelled_mask
from fedsim.engine import Simulation
from fedsim.errors import ConfigError
from fedsim.gradients import autograd_grad_fn
from fedsim.local import ClientJob, LocalEnv
from fedsim.schedule import LocalSchedule, cohort_batches
from fedsim.trainer import ClientTrainer
from fedsim.population import Holdouts
from strategies.fedavg import FedAvg
from tests.conftest import population_of
from tests.conftest import ROOT

FEDLABEL_TOML = ROOT / "experiments" / "fedlabel.toml"
SMALL = [
    "data.num_clients=10",
    "train.rounds=2",
    "train.local_steps=2",
    "trainer.unlabelled_steps=2",
    "model.name=mlp",
    "engine.device=cpu",
]


def fedlabel_config(*overrides: str):
    """experiments/fedlabel.toml shrunk to about a second: 10 clients, 2 rounds of 2 + 2 steps, an MLP."""
    return load_config(FEDLABEL_TOML, [*SMALL, *overrides])


def run(config, hidden_labels=None) -> Simulation:
    sim = Simulation(config)
    if hidden_labels is not None:
        sim.hidden_labels = hidden_labels(sim.hidden_labels)
    sim.run()
    return sim


def same_weights(a: Simulation, b: Simulation) -> bool:
    return all(torch.equal(a.params[k], b.params[k]) for k in a.params)


# ----------------------------------------------------------------------------- the label split


def test_label_split_is_stratified_seeded_and_keeps_one_label_at_least():
    labels = np.repeat(np.arange(4), [40, 30, 20, 10])
    mask = labelled_mask(labels, 0.2, np.random.default_rng(0))
    assert mask.sum() == 20
    assert [mask[labels == c].sum() for c in range(4)] == [8, 6, 4, 2]
    assert np.array_equal(mask, labelled_mask(labels, 0.2, np.random.default_rng(0)))
    assert not np.array_equal(mask, labelled_mask(labels, 0.2, np.random.default_rng(1)))
    assert labelled_mask(labels, 1.0, np.random.default_rng(0)).all()
    assert labelled_mask(np.array([3, 3, 5]), 0.05, np.random.default_rng(0)).sum() == 1


def test_split_labels_per_client_keeps_order_and_partitions_each_client():
    x = np.arange(30.0)[:, None]
    clients = [(x[:20], np.arange(20) % 2), (x[20:], np.zeros(10, dtype=np.int64))]
    population = population_of(clients, Holdouts(seed=0, label_ratio=0.3))
    for cid, (cx, cy) in enumerate(clients):
        client = population.client(cid)
        lx, ux, uy = client.x, client.unlabelled, client.hidden
        assert len(lx) == round(0.3 * len(cx)) == population.sizes[cid] and len(lx) + len(ux) == len(cx)
        assert torch.all(lx[1:, 0] > lx[:-1, 0])  # the labelled samples stay in client order
        assert sorted(torch.cat([lx, ux])[:, 0].tolist()) == cx[:, 0].tolist()
        assert torch.equal(torch.from_numpy(cy)[ux[:, 0].long() - int(cx[0, 0])], uy)  # hidden labels belong to their x
    full = population_of(clients, Holdouts(seed=0))
    assert [len(full.client(cid).unlabelled) for cid in (0, 1)] == [0, 0]


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("data.label_ratio=0", "data.label_ratio must be in (0, 1]"),
        ("data.label_ratio=1.5", "data.label_ratio must be in (0, 1]"),
        ("trainer.confidence=margin", "trainer.confidence must be one of maxprob, entropy, variance"),
        ("trainer.schedule=alternate", "trainer.schedule must be one of sequential, joint"),
        ("trainer.expert=both", "trainer.expert must be one of select, local, global"),
        ("trainer.lambda_mode=linear", "trainer.lambda_mode must be one of ratio, const"),
        ("trainer.beta=1.2", "trainer.beta must be in [0, 1]"),
        ("trainer.lambda_0=-1", "trainer.lambda_0 must be >= 0"),
        ("trainer.unlabelled_steps=0", "trainer.unlabelled_steps must be >= 1"),
        ("trainer.augment=mixup", "trainer.augment must be one of none, shift, shift_flip"),
    ],
)
def test_each_mistake_is_one_config_error(override, fragment):
    with pytest.raises(ConfigError) as err:
        Simulation(fedlabel_config(override))
    assert fragment in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- the must-holds


@pytest.mark.parametrize("schedule", ["sequential", "joint"])
def test_full_labels_leave_the_unlabelled_path_empty_and_equal_fedavg(schedule):
    fedlabel = run(fedlabel_config("data.label_ratio=1", f"trainer.schedule={schedule}", "trainer.beta=0"))
    fedavg = run(fedlabel_config("data.label_ratio=1", "trainer={name='backprop'}"))
    assert all(len(fedlabel.population.client(cid).unlabelled) == 0 for cid in range(len(fedlabel.population)))
    assert same_weights(fedlabel, fedavg)
    record = fedlabel.history.records[-1]
    assert all(math.isnan(record[c]) for c in PSEUDO_LABEL_COLUMNS)


def test_ordinary_trainers_train_on_the_labelled_samples_only():
    ordinary = ("trainer={name='backprop'}", "strategy.name=scaffold")
    sim = Simulation(fedlabel_config("data.label_ratio=0.2", *ordinary))
    clients = [sim.population.client(cid) for cid in range(len(sim.population))]
    sizes = [len(c.y) for c in clients]
    train_samples = len(sim.population.train[1])
    assert sum(sizes) + sum(len(c.unlabelled) for c in clients) == train_samples
    assert sum(sizes) < 0.25 * train_samples
    sim.run()
    assert "pseudo_coverage" not in sim.history.records[-1]


def test_hidden_labels_never_reach_training():
    config = fedlabel_config("data.label_ratio=0.2", "trainer.beta=0.2")
    honest = run(config)

    def shuffled(labels):
        gen = torch.Generator().manual_seed(0)
        return [h[torch.randperm(len(h), generator=gen)] for h in labels]

    shuffled_run = run(config, hidden_labels=shuffled)
    assert same_weights(honest, shuffled_run)
    assert (
        honest.history.records[-1]["pseudo_accuracy"] != shuffled_run.history.records[-1]["pseudo_accuracy"]
    )
    # a trainer's job holds the labelled samples and the unlabelled inputs, no label of those
    plan = honest.plan_round(1)
    for job in honest.backend.executor.jobs(plan, plan.client_ids):
        client = honest.population.client(job.client_id)
        assert torch.equal(job.data[1], client.y) and torch.equal(job.unlabelled, client.unlabelled)
        assert len(job.data[1]) == honest.population.sizes[job.client_id] < len(client.y) + len(client.hidden)


# ----------------------------------------------------------------- each switch, on constructed cases


def probs(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows)


# local is two-way unsure, global is peaked but spread: maxprob prefers global, entropy and variance local
LOCAL = probs([0.5, 0.5] + [0.0] * 8, [0.97, 0.03] + [0.0] * 8, [0.0, 0.96, 0.04] + [0.0] * 7)
GLOBAL = probs([0.55] + [0.05] * 9, [0.99] + [0.01 / 9] * 9, [0.02, 0.0, 0.98] + [0.0] * 7)


def test_higher_beta_lowers_coverage():
    coverage = [
        int(FedLabel(beta=beta).pseudo_targets(LOCAL, GLOBAL).kept.sum()) for beta in (0.0, 0.5, 0.97, 1.0)
    ]
    assert coverage == [3, 3, 2, 0]


@pytest.mark.parametrize(
    "confidence, expected_local",
    [
        ("maxprob", [False, False, False]),
        ("entropy", [True, False, False]),
        ("variance", [True, False, False]),
    ],
)
def test_confidence_score_decides_the_expert(confidence, expected_local):
    pseudo = FedLabel(confidence=confidence).pseudo_targets(LOCAL, GLOBAL)
    assert pseudo.from_local.tolist() == expected_local


def test_expert_switch_forces_one_expert():
    assert FedLabel(expert="local").pseudo_targets(LOCAL, GLOBAL).from_local.all()
    assert not FedLabel(expert="global").pseudo_targets(LOCAL, GLOBAL).from_local.any()
    assert FedLabel(expert="local").pseudo_targets(LOCAL, GLOBAL).labels.tolist() == [0, 0, 1]


def test_consistency_term_only_where_kept_and_agreeing_and_lambda_0_zero_removes_it():
    kept_only = FedLabel(lambda_0=0.0, beta=0.9).pseudo_targets(LOCAL, GLOBAL)
    assert torch.equal(
        kept_only.targets, torch.nn.functional.one_hot(kept_only.labels, 10) * kept_only.kept[:, None]
    )
    ratio = FedLabel(lambda_0=1.0, beta=0.9).pseudo_targets(LOCAL, GLOBAL)
    const = FedLabel(lambda_0=1.0, beta=0.9, lambda_mode="const").pseudo_targets(LOCAL, GLOBAL)
    extra_ratio, extra_const = ratio.targets - kept_only.targets, const.targets - kept_only.targets
    assert extra_ratio[0].abs().sum() == 0  # not kept (max 0.55 < beta)
    assert extra_ratio[2].abs().sum() == 0  # kept but the experts disagree (1 vs 2)
    torch.testing.assert_close(extra_const[1], LOCAL[1])  # global chosen, the other expert is local
    torch.testing.assert_close(extra_ratio[1], LOCAL[1] * 0.97 / 0.99)  # lambda_0 * h(p_o) / h(p_s)


# ----------------------------------------------------------------------------- the client loop


TINY_SCHEDULE = LocalSchedule(epochs=1, steps=3, batch_size=4)


def train_tiny(trainer):
    """One FedAvg client of a linear 4 -> 3 model with 6 labelled and 12 unlabelled samples, trained
    for a round by the semi-supervised trainer and, for reference, by plain backprop on the labelled
    part. Returns both updates and the semi-supervised one's pseudo-labelling events."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(18, 4, generator=gen)
    model = torch.nn.Linear(4, 3)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    strategy = FedAvg()
    env = LocalEnv(strategy, model, autograd_grad_fn(model, strategy.objective), TINY_SCHEDULE, seed=0)
    labelled = (x[:6], torch.arange(6) % 3)
    batches = cohort_batches(TINY_SCHEDULE, 0, 1, [0], [6], [1.0])[0]
    job = ClientJob(
        client_id=0, round=1, lr=0.5, global_params=params, broadcast={},
        strategy_state=strategy.init_client_state(params), trainer_state={},
        data=labelled, batches=batches, unlabelled=x[6:],
    )
    update = trainer.train(job, env)
    return (update, update.diagnostics), ClientTrainer().train(job, env)


def test_nothing_kept_and_no_consistency_leaves_the_labelled_result():
    (result, diagnostics), labelled_only = train_tiny(FedLabel(beta=1.0, lambda_0=0.0))
    assert result.num_steps == labelled_only.num_steps + 5
    assert all(
        torch.equal(result.upload["delta"][k], labelled_only.upload["delta"][k])
        for k in result.upload["delta"]
    )
    assert not diagnostics["kept"].any() and len(diagnostics["index"]) == 12
    (learning, _), _ = train_tiny(FedLabel(beta=0.0))
    assert any(
        not torch.equal(learning.upload["delta"][k], labelled_only.upload["delta"][k])
        for k in learning.upload["delta"]
    )


def test_schedules_count_steps_and_events_differently():
    (sequential, seq_events), _ = train_tiny(FedLabel(beta=0.0, unlabelled_steps=4))
    (joint, joint_events), _ = train_tiny(FedLabel(beta=0.0, schedule="joint"))
    assert sequential.num_steps == 3 + 4 and joint.num_steps == 3
    assert len(seq_events["index"]) == 12  # every unlabelled sample labelled once
    assert len(joint_events["index"]) == 3 * 4  # one unlabelled batch per joint step


def test_sample_count_sets_the_server_weight():
    (all_samples, _), _ = train_tiny(FedLabel())
    (labelled, _), _ = train_tiny(FedLabel(sample_count="labelled"))
    assert (all_samples.num_samples, labelled.num_samples) == (18, 6)


def test_augmented_views_are_seeded_bounded_and_shape_preserving():
    signal = torch.zeros(5, 1, 32)
    signal[:, 0, 16] = 1.0
    weak = augment(signal, "shift", False, torch.Generator().manual_seed(0))
    assert torch.equal(weak, augment(signal, "shift", False, torch.Generator().manual_seed(0)))
    peaks = weak[:, 0].argmax(1) - 16
    assert weak.shape == signal.shape and peaks.abs().max() <= 2 and weak.sum() == 5
    strong = augment(signal, "shift", True, torch.Generator().manual_seed(0))
    assert not torch.equal(strong.round(), strong)  # noise on top of the shift
    images = torch.arange(2 * 8 * 8.0).view(2, 1, 8, 8).repeat(8, 1, 1, 1)
    flipped = augment(images, "shift_flip", False, torch.Generator().manual_seed(0))
    assert flipped.shape == images.shape
    assert augment(images, "none", True, torch.Generator()) is images


def test_pseudo_label_metrics_score_events_against_hidden_labels():
    diagnostics = {
        "index": torch.tensor([0, 1, 2, 3]),
        "label": torch.tensor([1, 1, 0, 2]),
        "kept": torch.tensor([True, True, True, False]),
        "from_local": torch.tensor([True, False, False, True]),
        "agree": torch.tensor([True, False, True, True]),
    }
    reports = [ClientReport(3, 4, 1, 0.0, diagnostics), ClientReport(5, 2, 1, 0.0)]
    hidden = {3: torch.tensor([1, 0, 0, 2])}
    metrics = pseudo_label_metrics(reports, hidden)
    assert metrics == pytest.approx(
        {
            "pseudo_coverage": 0.75,
            "pseudo_accuracy": 2 / 3,
            "pseudo_accuracy_local": 1.0,
            "pseudo_accuracy_global": 0.5,
            "local_expert_share": 0.5,
            "expert_agreement": 0.75,
        }
    )


def test_a_backend_that_cannot_run_a_semi_supervised_trainer_refuses_it_in_one_line():
    sim = Simulation(fedlabel_config("data.label_ratio=0.5"))
    with pytest.raises(ConfigError, match="trainer 'fedlabel' trains one client at a time") as err:
        make_backend("vectorized", sim.task)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="set engine.backend=serial"):
        Simulation(fedlabel_config("data.label_ratio=0.5", "engine.backend=vectorized"))


# ----------------------------------------------------------------------------- end to end


def test_cli_run_on_digits_with_20_percent_labels_writes_the_diagnostics(tmp_path):
    args = ["run", str(FEDLABEL_TOML), "--out", str(tmp_path), "-q"]
    for override in [
        "data.num_clients=10",
        "train.rounds=3",
        "train.local_steps=3",
        "model.name=mlp",
        "engine.device=cpu",
    ]:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics["round"]) == [1, 2, 3]
    assert set(PSEUDO_LABEL_COLUMNS) <= set(metrics.columns)
    for column in ("pseudo_coverage", "local_expert_share", "expert_agreement"):
        assert metrics[column].between(0, 1).all()


def test_quick_benchmark_writes_the_table(tmp_path):
    out = tmp_path / "fedlabel"
    fedlabel_benchmark.main(
        ["--quick", "--workers", "1", "--methods", "fedlabel,fedavg_labelled", "--out", str(out)]
    )
    results = json.loads(out.with_suffix(".json").read_text())
    assert [(r["method"], r["label_ratio"]) for r in results["summary"]] == [
        ("fedlabel", 0.2),
        ("fedlabel", 0.05),
        ("fedavg_labelled", 0.2),
        ("fedavg_labelled", 0.05),
    ]
    assert all(0 <= r["pseudo_coverage"] <= 1 for r in results["runs"] if r["method"] == "fedlabel")
    assert "| 5% | fedavg_labelled |" in out.with_suffix(".md").read_text()
