"""Byzantine clients (fedsim.attacks): who attacks, what each attack sends, and that every
backend sends the server the same corrupted uploads."""

import pytest
import torch

from fedsim.attacks import Attack, choose_attackers, flip_labels
from fedsim.config import AttackConfig
from fedsim.engine import Simulation
from fedsim.errors import ConfigError
from fedsim.federation import build_federation
from fedsim.validate import validate
from tests.conftest import small_config


def upload(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"delta": {"w": torch.randn(3, 4, generator=gen), "b": torch.randn(3, generator=gen)},
            "dc": {"w": torch.ones(3, 4), "b": torch.ones(3)}}


def test_attackers_are_a_seeded_share_of_the_federation():
    config = AttackConfig(name="sign_flip", fraction=0.25)
    chosen = choose_attackers(config, 20, seed=3)
    assert len(chosen) == 5 and chosen == choose_attackers(config, 20, seed=3)
    assert chosen != choose_attackers(config, 20, seed=4)
    assert choose_attackers(AttackConfig(), 20, seed=3) == frozenset()


@pytest.mark.parametrize("name", ["sign_flip", "scaled", "gaussian"])
def test_only_attackers_corrupt_only_their_delta(name):
    attack = Attack(AttackConfig(name=name, fraction=0.5, scale=4.0, std=0.5), frozenset({1}), seed=0)
    honest, sent = upload(), attack.corrupt(2, 1, upload())
    assert attack.corrupt(2, 0, honest) is honest
    assert all(torch.equal(sent["dc"][k], honest["dc"][k]) for k in honest["dc"])
    delta = sent["delta"]
    if name == "sign_flip":
        assert all(torch.equal(delta[k], -honest["delta"][k]) for k in delta)
    elif name == "scaled":
        assert all(torch.equal(delta[k], 4.0 * honest["delta"][k]) for k in delta)
    else:  # noise from (seed, round, client), the same on every call, another in another round
        again, later = attack.corrupt(2, 1, upload(1)), attack.corrupt(3, 1, upload())
        assert all(torch.equal(delta[k], again["delta"][k]) for k in delta)
        assert not torch.equal(delta["w"], later["delta"]["w"])
        big = attack.corrupt(1, 1, {"delta": {"w": torch.zeros(100_000)}})["delta"]["w"]
        assert float(big.std()) == pytest.approx(0.5, rel=0.02)


def test_a_stacked_chunk_is_corrupted_row_by_row_as_one_client_at_a_time():
    attack = Attack(AttackConfig(name="gaussian", fraction=0.5), frozenset({4, 7}), seed=1)
    ids = [7, 2, 4]
    uploads = [upload(i) for i in range(3)]
    stacked = {g: {k: torch.stack([u[g][k] for u in uploads]) for k in uploads[0][g]} for g in uploads[0]}
    sent = attack.corrupt_stacked(5, ids, stacked)
    for row, cid in enumerate(ids):
        one = attack.corrupt(5, cid, uploads[row])
        assert all(torch.equal(sent[g][k][row], one[g][k]) for g in one for k in one[g])


def test_label_flipping_poisons_only_the_attackers_training_labels():
    overrides = ("data.client_test_fraction=0.2", "data.alpha=0.5")
    clean = build_federation(small_config(*overrides))
    federation = build_federation(small_config(*overrides, "attack.name=label_flip", "attack.fraction=0.3"))
    attackers = choose_attackers(AttackConfig(name="label_flip", fraction=0.3), 10, seed=0)
    assert len(attackers) == 3 and federation.task.attack is None  # a data attack: uploads are honest
    for cid in range(10):
        client, honest = federation.population.client(cid), clean.population.client(cid)
        assert torch.equal(client.y, flip_labels(honest.y, 10) if cid in attackers else honest.y)
        assert torch.equal(client.test[1], honest.test[1])  # true test labels


@pytest.mark.parametrize("name", ["sign_flip", "gaussian", "scaled", "label_flip"])
def test_every_attack_runs_the_same_on_vectorized_and_changes_fedavgs_model(name):
    overrides = (f"attack.name={name}", "attack.fraction=0.3", "train.rounds=2", "engine.threads=1")
    serial = Simulation(small_config(*overrides))
    serial.run()
    vectorized = Simulation(small_config(*overrides, "engine.backend=vectorized"))
    vectorized.run()
    for k, want in serial.params.items():
        assert float((vectorized.params[k] - want).norm()) <= 1e-5 * float(want.norm()) + 1e-7
    honest = Simulation(small_config("train.rounds=2", "engine.threads=1"))
    honest.run()
    assert all(not torch.allclose(serial.params[k], honest.params[k]) for k in honest.params)
    if name != "scaled":  # a boosted honest update speeds early rounds up; the others hurt at once
        assert serial.history.accuracies()[-1] < honest.history.accuracies()[-1]


@pytest.mark.parametrize(
    "overrides, message",
    [(("attack.name=sign_flip",), "attack.name='sign_flip' needs attack.fraction > 0"),
     (("attack.fraction=0.2",), "attack.fraction > 0 needs an attack.name"),
     (("attack.name=backdoor", "attack.fraction=0.2"), "attack.name must be one of none, sign_flip"),
     (("attack.name=scaled", "attack.fraction=0.5"), r"attack.fraction must be in \[0, 0.5\)")],
)
def test_attack_settings_are_checked_before_any_work(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        validate(small_config(*overrides))
    assert "\n" not in str(err.value)
