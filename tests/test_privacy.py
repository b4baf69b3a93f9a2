"""User-level DP-FedAvg: clipped updates, seeded Gaussian noise on the server, and the privacy
spent per round from Opacus's RDP accountant."""

import csv
import math

import pytest
import torch

from fedsim import seeding, tree
from fedsim.aggregate import WeightedSum
from fedsim.checkpoint import prepare_run
from fedsim.engine import Simulation
from fedsim.strategy import Aggregate, LocalContext, LocalSummary, RoundInfo
from strategies.dp_fedavg import DPFedAvg, clipped, epsilon
from tests.conftest import small_config


def test_clipping_bounds_the_update_and_leaves_small_ones_alone():
    big = {"w": torch.full((3,), 4.0), "b": torch.tensor([3.0])}
    small = {"w": torch.full((3,), 0.1), "b": torch.tensor([0.1])}
    assert float(tree.norm(clipped(big, 1.5))) == pytest.approx(1.5, rel=1e-6)
    assert all(torch.equal(clipped(small, 1.5)[k], small[k]) for k in small)


def test_a_round_is_the_uniform_mean_of_clipped_updates_plus_noise_of_std_z_s_over_m():
    strategy = DPFedAvg(clip_norm=1.0, noise_multiplier=0.7)
    x = {"w": torch.zeros(4, dtype=torch.float64)}
    ends = [{"w": torch.tensor([3.0, 0, 0, 0], dtype=torch.float64)}, {"w": torch.tensor([0, 0.2, 0, 0], dtype=torch.float64)}]
    total = WeightedSum()
    for end in ends:
        upload, _ = strategy.client_end(end, {}, LocalContext(x, {}, {}, 0.1, 1), LocalSummary(1, 10, 0.1, 0.0))
        total.add(upload, strategy.upload_weights(10))
    got, _ = strategy.server_update(x, {}, Aggregate(total.means(torch.float64)), RoundInfo(3, 0.1, 20, 2, seed=5))
    mean_clipped = torch.tensor([-1.0, -0.2, 0, 0], dtype=torch.float64) / 2  # x - mean(clip(x - y_i))
    noise = 0.7 * 1.0 / 2 * torch.randn(4, generator=seeding.torch_generator(5, "dp_noise", 3), dtype=torch.float64)
    torch.testing.assert_close(got["w"], -mean_clipped - noise, rtol=0, atol=1e-12)


def test_epsilon_is_opacus_rdp_accountant_of_the_sampled_gaussian():
    # Google's dp-accounting RdpAccountant gives 4.848039837634081 for the same mechanism
    assert epsilon(1.0, 0.1, 30, 1e-5) == pytest.approx(4.848039837634, rel=1e-9)
    assert epsilon(1.0, 0.1, 60, 1e-5) > epsilon(1.0, 0.1, 30, 1e-5) > epsilon(2.0, 0.1, 30, 1e-5)


def test_a_dp_run_writes_epsilon_every_round_and_agrees_on_vectorized(tmp_path):
    overrides = ("strategy.name=dp_fedavg", "strategy.noise_multiplier=0.5", "train.fraction=0.5", "engine.threads=1")
    sim = prepare_run(small_config(*overrides), tmp_path / "run")
    sim.run()
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        spent = [float(row["epsilon"]) for row in csv.DictReader(f)]
    assert spent == [epsilon(0.5, 0.5, r, 1e-5) for r in (1, 2, 3)] and spent[0] < spent[1] < spent[2]
    assert all(math.isfinite(e) for e in spent)
    vectorized = Simulation(small_config(*overrides, "engine.backend=vectorized"))
    vectorized.run()
    for k, want in sim.params.items():
        assert float((vectorized.params[k] - want).norm()) <= 1e-5 * float(want.norm()) + 1e-7


# ---------------------------------------------------------------------------- local DP-SGD


def test_a_dp_sgd_step_is_opacus_dp_optimizers_step_under_the_same_generator():
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from clients.dp_sgd import private_grad_fn

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    x, y = 3 * torch.randn(6, 4), torch.randint(0, 3, (6,))
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    clip, sigma, lr = 0.5, 0.8, 0.1
    grad_fn = private_grad_fn(net, torch.nn.functional.cross_entropy, clip, sigma, torch.Generator().manual_seed(7))
    loss, noised = grad_fn(params, (x, y))
    ours = {k: params[k] - lr * noised[k] for k in params}

    reference = GradSampleModule(net)
    optimiser = DPOptimizer(torch.optim.SGD(reference.parameters(), lr=lr), noise_multiplier=sigma, max_grad_norm=clip,
                            expected_batch_size=6, generator=torch.Generator().manual_seed(7))
    optimiser.zero_grad()
    torch.nn.functional.cross_entropy(reference(x), y).backward()
    optimiser.step()
    for k, v in net.named_parameters():
        torch.testing.assert_close(ours[k], v.detach(), rtol=0, atol=1e-6)
    before = torch.nn.functional.cross_entropy(torch.func.functional_call(net, params, (x,)), y)
    assert float(loss) == pytest.approx(float(before), rel=1e-6)  # the mean of the per-sample losses


def test_dp_sgd_reruns_identically_and_is_refused_on_vectorized():
    from fedsim.errors import ConfigError
    from fedsim.validate import validate

    overrides = ("trainer.name=dp_sgd", "trainer.noise_multiplier=0.5", "train.rounds=2", "engine.threads=1")
    sim = Simulation(small_config(*overrides))
    sim.run()
    again = Simulation(small_config(*overrides))
    again.run()
    assert all(torch.equal(sim.params[k], again.params[k]) for k in sim.params)  # seeded noise: reruns agree
    plain = Simulation(small_config("train.rounds=2", "engine.threads=1"))
    plain.run()
    assert all(not torch.equal(sim.params[k], plain.params[k]) for k in sim.params)
    with pytest.raises(ConfigError, match="one client at a time.*set engine.backend=serial"):
        validate(small_config(*overrides, "engine.backend=vectorized"))
