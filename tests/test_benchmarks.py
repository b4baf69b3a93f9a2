"""The speed benchmark: its table, its CIFAR-10-shaped data, its Flower runner building once per actor."""

from __future__ import annotations

import json
import os

import torch

from benchmarks import speed
from fedsim.config import load_config
from fedsim.engine import Simulation


def test_quick_speed_benchmark_writes_the_table(tmp_path):
    runners = ["vectorized", "plain"]
    speed.main(["--quick", "--workloads", "digits10", "--runners", ",".join(runners), "--out", str(tmp_path)])
    results = json.loads((tmp_path / "speed.json").read_text())
    workload = results["workloads"]["digits10"]
    assert workload["rounds"] == speed.QUICK_ROUNDS and workload["floor_s"] > 0
    assert list(workload["runners"]) == runners
    for run in workload["runners"].values():
        assert "error" not in run, run
        assert len(run["round_s"]) == speed.QUICK_ROUNDS
        assert run["steady_s"] > 0 and run["peak_rss_mb"] > 0 and 0 <= run["final_accuracy"] <= 1
    table = (tmp_path / "speed.md").read_text()
    assert "| runner | s/round (steady) |" in table
    assert all(f"| {runner} |" in table for runner in runners)
    assert "vectorized is" in table


def test_cifar10_shaped_data_loads_through_the_hub_loader_as_a_cifar10_copy_would(tmp_path):
    speed.write_cifar10_shaped(tmp_path / "c10", {"train": 40, "test": 8})
    settings = ["data.dataset=hf:cifar10", f"data.path={tmp_path / 'c10'}", "data.num_clients=4"]
    sim = Simulation(load_config(None, [*settings, "data.partitioner=iid", "model.name=cnn"]))
    x, y = sim.population.client(0).data
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32
    assert 0 <= float(x.min()) <= float(x.max()) <= 1 and 0 <= int(y.min()) <= int(y.max()) < 10
    assert len(sim.y_test) == 8
    assert not speed.WORKLOADS["cifar10_pfl"].default  # a GPU workload, run only when named


def test_flower_baseline_builds_the_workload_once_per_actor_not_per_message(tmp_path):
    # The ClientApp lives in an importable module, so each Ray actor keeps its copy of the data and
    # the model: 30 train messages (10 clients x 3 rounds) on two actors build the workload twice.
    speed.main(["--quick", "--workloads", "digits10", "--runners", "flower", "--out", str(tmp_path)])
    run = json.loads((tmp_path / "speed.json").read_text())["workloads"]["digits10"]["runners"]["flower"]
    assert "error" not in run, run
    flower = run["flower"]
    assert flower["messages"] == 10 * speed.QUICK_ROUNDS
    assert 1 <= flower["actors"] <= os.cpu_count()
    assert flower["workload_builds"] == flower["actors"]  # once per actor, not once per message
    assert len(flower["client_train_s"]) == speed.QUICK_ROUNDS
    assert all(seconds > 0 for seconds in flower["client_train_s"])
    assert len(flower["driver_cpu_s"]) == speed.QUICK_ROUNDS
    assert "the workload built" in (tmp_path / "speed.md").read_text()


def test_the_scale_benchmark_writes_its_table(tmp_path):
    from benchmarks import scale

    scale.main(["--sizes", "2000", "--rounds", "2", "--strategies", "scaffold", "--budget-clients", "0",
                "--out", str(tmp_path / "scale")])
    [row] = json.loads((tmp_path / "scale.json").read_text())["rows"]
    assert row["num_clients"] == 2000 and 1000 < row["participants"] < 2000  # two cohorts of 1000 that overlap
    assert row["round_s"] > 0 and row["setup_s"] > 0 and row["peak_rss_mb"] > 0
    assert "| scaffold | 2,000 |" in (tmp_path / "scale.md").read_text()
