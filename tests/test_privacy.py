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
