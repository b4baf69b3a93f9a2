"""Personalised trainers through the client seam (FedPer, FedRep, Ditto, FedBN) and the local fine-tuning
baseline: each rule checked against a hand-written step, the private parts never uploaded,
personal models scored per client, on serial and vectorized alike, and resumed exactly."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from clients.ditto import Ditto
from clients.fedbn import FedBN
from clients.fedper import FedPer, head_names
from clients.fedrep import FedRep
from fedsim import tree
from fedsim.checkpoint import prepare_run
from fedsim.engine import Callback, Simulation
from fedsim.errors import ConfigError
from fedsim.evaluation import finetuned, per_sample
from fedsim.gradients import autograd_grad_fn
from fedsim.normalisation import untrack_statistics
from fedsim.schedule import LocalSchedule, batch_seeds, client_batches
from fedsim.strategy import LocalContext
from fedsim.validate import validate
from strategies.fedavg import FedAvg
from tests.conftest import small_config, train_one

PERSONAL = ("data.client_test_fraction=0.25", "data.alpha=0.1")
FEDBN = ("trainer.name=fedbn", 'model={name="cnn", norm="batch", channels=[8, 8]}')


def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    data = (torch.randn(12, 4), torch.randint(0, 3, (12,)))
    return model, dict(model.named_parameters()), data


def test_fedper_trains_its_private_head_and_uploads_only_the_body():
    model, params, data = tiny()
    trainer = FedPer()
    trainer.prepare(model, params)
    assert trainer.head == ["2.weight", "2.bias"]
    own_head = {k: torch.randn_like(params[k]) for k in trainer.head}
    grad_fn = autograd_grad_fn(model, nn.functional.cross_entropy)
    ctx = LocalContext(params, {}, {}, 0.1, 0)
    update = train_one(FedAvg(), grad_fn, data, ctx, LocalSchedule(1, 0, 4), trainer=trainer,
                       trainer_state={"head": own_head})
    delta = update.upload["delta"]
    assert all(torch.equal(delta[k], torch.zeros_like(delta[k])) for k in trainer.head)
    assert all(delta[k].abs().sum() > 0 for k in ("0.weight", "0.bias"))
    new_head = update.trainer_state["head"]
    assert all(not torch.equal(new_head[k], own_head[k]) for k in trainer.head)  # trained from its own head
    with pytest.raises(ConfigError, match="leaves no shared body"):
        head_names(model, 2)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_fedrep_trains_the_head_then_the_body_and_uploads_only_the_body(momentum):
    model, params, data = tiny()
    trainer = FedRep(head_fraction=0.6)  # of 5 steps: 3 on the head, then 2 on the body
    trainer.sgd = dataclasses.replace(trainer.sgd, momentum=momentum)
    trainer.prepare(model, params)
    own_head = {k: torch.randn_like(params[k]) for k in trainer.head}
    grad_fn = autograd_grad_fn(model, nn.functional.cross_entropy)
    lr = 0.1
    update = train_one(FedAvg(), grad_fn, data, LocalContext(params, {}, {}, lr, 5), LocalSchedule(0, 5, 4),
                       trainer=trainer, trainer_state={"head": own_head})
    # by hand: one torch SGD optimiser per phase, over the part that phase trains
    net = {k: v.detach().clone() for k, v in {**params, **own_head}.items()}
    [seed] = batch_seeds(0, "shuffle", 1, [0])
    head, body = trainer.head, [k for k in params if k not in trainer.head]
    phases = [torch.optim.SGD([p for k, p in net.items() if k in part], lr=lr, momentum=momentum)
              for part in (head, body)]
    for step, idx in enumerate(client_batches(12, 5, 4, int(seed))):
        leaves = {k: v.requires_grad_(True) for k, v in net.items()}
        loss = nn.functional.cross_entropy(torch.func.functional_call(model, leaves, (data[0][idx],)), data[1][idx])
        optimiser = phases[0 if step < 3 else 1]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    for k in head:
        torch.testing.assert_close(update.trainer_state["head"][k], net[k].detach(), rtol=0, atol=1e-6)
        assert torch.equal(update.upload["delta"][k], torch.zeros_like(params[k]))
    for k in body:
        torch.testing.assert_close(params[k] - update.upload["delta"][k], net[k].detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_fedbn_keeps_batchnorm_private_with_torchs_running_statistics(momentum):
    """Against torch: a BatchNorm net trained with torch.optim.SGD, its buffers updated in place."""
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.BatchNorm1d(4, momentum=0.3), nn.ReLU(),
                                 nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 3))
    reference, model = make(), make()
    model.load_state_dict(reference.state_dict())
    trainer = FedBN()
    trainer.sgd = dataclasses.replace(trainer.sgd, momentum=momentum)
    params = trainer.prepare(model, tree.clone(dict(model.named_parameters())))
    assert trainer.norm == ["1.weight", "1.bias"]
    assert set(untrack_statistics(model)) == {"1.running_mean", "1.running_var"}
    data = (torch.randn(12, 1, 6), torch.randint(0, 3, (12,)))
    grad_fn = autograd_grad_fn(model, nn.functional.cross_entropy)
    lr = 0.1
    update = train_one(FedAvg(), grad_fn, data, LocalContext(params, {}, {}, lr, 4), LocalSchedule(0, 4, 5),
                       trainer=trainer, trainer_state=trainer.init_state(params))
    [seed] = batch_seeds(0, "shuffle", 1, [0])
    optimiser = torch.optim.SGD(reference.parameters(), lr=lr, momentum=momentum)
    for idx in client_batches(12, 4, 5, int(seed)):
        optimiser.zero_grad()
        nn.functional.cross_entropy(reference(data[0][idx]), data[1][idx]).backward()
        optimiser.step()
    want = reference.state_dict()
    for k in ("1.running_mean", "1.running_var"):
        torch.testing.assert_close(update.trainer_state["statistics"][k], want[k], rtol=0, atol=1e-6)
    for k in trainer.norm:
        torch.testing.assert_close(update.trainer_state["norm"][k], want[k], rtol=0, atol=1e-6)
        assert torch.equal(update.upload["delta"][k], torch.zeros_like(params[k]))  # never uploaded
    for k in ("0.weight", "5.weight"):
        torch.testing.assert_close(params[k] - update.upload["delta"][k], want[k], rtol=0, atol=1e-6)
    # the personal model, in eval mode, is the reference network in eval mode
    personal = trainer.personal_params(tree.sub(params, update.upload["delta"]), update.trainer_state)
    reference.eval()
    losses, _ = per_sample(model, personal, *data, batch=5)
    torch.testing.assert_close(losses, nn.functional.cross_entropy(reference(data[0]), data[1], reduction="none"))
    assert model.training  # scoring restored the training mode


def test_ditto_personal_step_is_the_papers_rule():
    model, params, data = tiny()
    lam, lr = 0.5, 0.1
    grad_fn = autograd_grad_fn(model, nn.functional.cross_entropy)
    personal = {k: v + 0.3 for k, v in params.items()}
    schedule = LocalSchedule(0, 3, 4)
    ctx = LocalContext(params, {}, {}, lr, 0)
    update = train_one(FedAvg(), grad_fn, data, ctx, schedule, trainer=Ditto(lam=lam),
                       trainer_state={"personal": personal})
    plain = train_one(FedAvg(), grad_fn, data, ctx, schedule)
    assert all(torch.equal(update.upload["delta"][k], plain.upload["delta"][k]) for k in params)  # FedAvg's global part
    # v <- v - lr * (grad F(v) + lam * (v - w)), on the same three batches
    [seed] = batch_seeds(0, "shuffle", 1, [0])
    v = {k: t.detach().clone() for k, t in personal.items()}
    for idx in client_batches(12, 3, 4, int(seed)):
        _, g = grad_fn(v, (data[0][idx], data[1][idx]))
        v = {k: v[k] - lr * (g[k] + lam * (v[k] - params[k])) for k in v}
    for k in v:
        torch.testing.assert_close(update.trainer_state["personal"][k], v[k], rtol=0, atol=1e-7)


def test_finetuning_is_plain_sgd_from_the_global_model():
    model, params, data = tiny()
    tuned = finetuned(model, params, data, steps=4, batch_size=5, lr=0.2, batch_seed=7)

    grad_fn = autograd_grad_fn(model, nn.functional.cross_entropy)
    want = dict(params)
    for idx in client_batches(12, 4, 5, 7):
        want = tree.add(want, grad_fn(want, (data[0][idx], data[1][idx]))[1], -0.2)
    assert all(torch.equal(tuned[k], want[k]) for k in want)


@pytest.mark.parametrize("overrides", [("trainer.name=fedper",), ("trainer.name=fedrep",), ("trainer.name=ditto",), FEDBN, ("eval.finetune_steps=3",)],
                         ids=["fedper", "fedrep", "ditto", "fedbn", "finetune"])
def test_personal_models_are_scored_per_client_and_agree_on_vectorized(overrides, tmp_path):
    serial = prepare_run(small_config(*PERSONAL, *overrides), tmp_path / "serial")
    summary = serial.run()
    assert summary["final_personal_accuracy"]["mean"] == serial.history.records[-1]["personal_accuracy_mean"]
    header = (tmp_path / "serial" / "client_metrics.csv").read_text().splitlines()[0]
    assert header.endswith("personal_accuracy,personal_loss")
    vectorized = Simulation(small_config(*PERSONAL, *overrides, "engine.backend=vectorized"))
    vectorized.run()
    for name, want in serial.params.items():
        assert float((vectorized.params[name] - want).norm()) <= 1e-5 * float(want.norm()) + 1e-7, name
    assert np.allclose(vectorized.personal_scores.loss, serial.personal_scores.loss, atol=1e-4)


def test_fedper_keeps_the_global_head_at_its_initial_value():
    sim = Simulation(small_config(*PERSONAL, "trainer.name=fedper"))
    start = tree.clone(sim.params)
    sim.run()
    for k in sim.trainer.head:
        assert torch.equal(sim.params[k], start[k])
    assert any(not torch.equal(sim.params[k], start[k]) for k in sim.params if k not in sim.trainer.head)


class Crash(Callback):
    def on_round_done(self, sim):
        if sim.round == 2:
            raise RuntimeError("simulated crash")


@pytest.mark.parametrize("trainer", [("trainer.name=ditto",), FEDBN], ids=["ditto", "fedbn"])
def test_a_resumed_personalised_run_equals_an_uninterrupted_one(tmp_path, trainer):
    config = small_config(*PERSONAL, *trainer, "train.checkpoint_every=1", "train.rounds=4", "train.fraction=0.5")
    whole = prepare_run(config, tmp_path / "whole")
    whole.run()
    with pytest.raises(RuntimeError):
        prepare_run(config, tmp_path / "resumed", [Crash()]).run()
    resumed = prepare_run(config, tmp_path / "resumed", resume=True)
    resumed.run()
    assert resumed.history.records[-1]["personal_accuracy_mean"] == whole.history.records[-1]["personal_accuracy_mean"]
    for cid in whole.client_states.client_ids():
        mine, theirs = resumed.client_states.get(cid), whole.client_states.get(cid)
        assert all(torch.equal(mine[g][k], theirs[g][k]) for g in theirs for k in theirs[g])
    assert (tmp_path / "resumed" / "client_metrics.csv").read_text() == (tmp_path / "whole" / "client_metrics.csv").read_text()


def test_finetuning_a_personalised_trainer_is_refused():
    with pytest.raises(ConfigError, match="keeps personal models of its own"):
        validate(small_config(*PERSONAL, "trainer.name=ditto", "eval.finetune_steps=2"))
    with pytest.raises(ConfigError, match="set data.client_test_fraction > 0"):
        validate(small_config("eval.finetune_steps=2"))


def test_batchnorm_needs_a_trainer_that_keeps_its_statistics():
    with pytest.raises(ConfigError, match="has BatchNorm layers .'1', '5'.*trainer 'backprop' does not keep"):
        Simulation(small_config('model={name="cnn", norm="batch", channels=[8, 8]}'))
    with pytest.raises(ConfigError, match="trainer 'fedbn' keeps .* but this model has none"):
        Simulation(small_config("trainer.name=fedbn"))
