"""The Ray backend gives the serial backend's results bit for bit, survives a killed worker,
refuses impossible resource requests up front, and leaves no processes behind.

All in-process runs join one two-node Ray cluster started once for this module
(`ray.cluster_utils.Cluster`: two raylets on this machine); the local-instance path (start,
Ctrl-C, shutdown) runs once, in a subprocess through the CLI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
import torch
from ray.cluster_utils import Cluster

from fedsim.backends.ray_pool import WorkerPoolError, assign_shares, pool_size
from fedsim.config import EngineConfig, load_config
from fedsim.engine import Callback, Simulation
from fedsim.errors import ConfigError, TrainingDiverged
from fedsim.results import RunFolder
from tests.conftest import QUICKSTART, ROOT, small_config

NODE_CPUS = 2  # per node; two nodes
QUICKSTART_SHORT = ("engine.device=cpu", "train.rounds=3")
PARTIAL = ("data.num_clients=12", "train.rounds=3", "train.local_epochs=1", "engine.device=cpu",
           "train.fraction=0.5", "train.dropout=0.2", "train.min_local_work=0.3")
POOLS = [("1", "2"), ("2", "1"), ("3", "1")]  # (workers, cpus_per_worker): 2 torch threads vs 1
# A worker trains with `cpus_per_worker` torch threads. Kernels may round differently with another
# thread count (seen on AMD EPYC: MKL's and ATen's reductions), so the serial reference runs with
# the same number of threads; the pool size, the shares and the merge order never change a bit.


@pytest.fixture(scope="module")
def cluster():
    """Two raylets on this machine, NODE_CPUS logical CPUs each; every test run joins it."""
    store = 100 * 1024**2
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": NODE_CPUS, "object_store_memory": store, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=store)
    cluster.wait_for_nodes()
    yield cluster.address
    cluster.shutdown()


def run(overrides, callbacks=()):
    sim = Simulation(load_config(QUICKSTART, list(overrides)), list(callbacks))
    sim.run()
    return sim


def on_ray(address: str, workers: str = "2", cpus: str = "1", *extra: str) -> tuple[str, ...]:
    return ("engine.backend=ray", f"engine.ray_address={address}", f"engine.workers={workers}",
            f"engine.cpus_per_worker={cpus}", *extra)


@cache
def serial(overrides: tuple[str, ...], threads: int = 1) -> Simulation:
    """The reference: the same config on the serial backend with `threads` torch threads, run once per module."""
    return run((*overrides, f"engine.threads={threads}"))


def assert_same_run(sim: Simulation, reference: Simulation) -> None:
    assert sim.history.accuracies() == reference.history.accuracies()
    losses = [r["train_loss"] for r in sim.history.records]
    assert losses == [r["train_loss"] for r in reference.history.records]
    assert all(torch.equal(sim.params[k], reference.params[k]) for k in reference.params)


# --------------------------------------------------------------------------- pure parts


def test_shares_are_balanced_by_local_steps_and_deterministic():
    cohort = [0, 2, 3, 5, 8, 9]
    costs = {0: 10, 2: 1, 3: 7, 5: 3, 8: 7, 9: 2}
    shares = assign_shares(cohort, costs, 3)
    assert shares == [[0], [3, 5], [2, 8, 9]]  # loads 10, 10, 10; each share in cohort order
    assert sorted(c for s in shares for c in s) == cohort
    assert assign_shares(cohort, costs, 8)[6:] == [[], []]  # more workers than clients: some idle


def test_pool_is_sized_from_resources_or_refused():
    assert pool_size(EngineConfig(), cpus=16, gpus=0, where="machine") == 16
    assert pool_size(EngineConfig(gpus_per_worker=0.25), cpus=16, gpus=2, where="machine") == 8
    assert pool_size(EngineConfig(workers=3, cpus_per_worker=0.5), cpus=2, gpus=0, where="machine") == 3
    with pytest.raises(ConfigError) as err:
        pool_size(EngineConfig(workers=3), cpus=2, gpus=0, where="machine")
    assert "needs 3 CPUs" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="needs 1 CPUs and 0.5 GPUs"):
        pool_size(EngineConfig(gpus_per_worker=0.5), cpus=8, gpus=0, where="Ray cluster")


@pytest.mark.parametrize(
    "override, message",
    [
        ("engine.workers=-1", "engine.workers must be >= 0"),
        ("engine.cpus_per_worker=0", "engine.cpus_per_worker must be > 0"),
        ("engine.gpus_per_worker=1.5", "engine.gpus_per_worker must be a fraction"),
        ("engine.max_retries=-1", "engine.max_retries must be >= 0"),
        ("engine.gpus_per_worker=0.5", "needs engine.device=cuda"),
        ("engine.worker_backend=flower", "engine.worker_backend must be one of serial, vectorized, auto"),
    ],
)
def test_bad_ray_settings_are_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        Simulation(small_config("engine.backend=ray", override))
    assert "\n" not in str(err.value)


def test_local_learning_on_vectorized_ray_workers_is_one_line():
    overrides = ("engine.backend=ray", "engine.worker_backend=vectorized", "trainer.name=local_learning")
    with pytest.raises(ConfigError, match="set engine.worker_backend=serial") as err:
        Simulation(small_config(*overrides))
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- same results as serial


@pytest.mark.parametrize("config", [QUICKSTART_SHORT, PARTIAL], ids=["quickstart", "partial"])
def test_any_pool_size_matches_serial_bit_for_bit(cluster, config):
    for workers, cpus in POOLS:
        assert_same_run(run(config + on_ray(cluster, workers, cpus)), serial(config, int(cpus)))


@pytest.mark.parametrize("trainer", [("trainer.name=fedper",), ("trainer.name=fedrep",), ("trainer.name=ditto",),
                                     ("trainer.name=fedbn", 'model={name="cnn", norm="batch", channels=[8, 8]}')],
                         ids=["fedper", "fedrep", "ditto", "fedbn"])
def test_personalised_trainers_and_federated_evaluation_match_serial_bit_for_bit(cluster, trainer):
    config = PARTIAL + (*trainer, "data.client_test_fraction=0.25", "data.validation_fraction=0.1")
    sim, reference = run(config + on_ray(cluster, "2", "1")), serial(config)
    assert_same_run(sim, reference)
    assert sim.history.records == [{**r, "round_s": s["round_s"], "wall_s": s["wall_s"]}
                                   for r, s in zip(reference.history.records, sim.history.records)]
    assert np.array_equal(sim.personal_scores.accuracy, reference.personal_scores.accuracy)


@pytest.mark.parametrize("strategy", ["fedavg", "scaffold"])
def test_vectorized_workers_match_serial_up_to_float_rounding(cluster, strategy):
    """Each actor trains its share in vmapped chunks: serial's result up to float rounding."""
    config = PARTIAL + (f"strategy.name={strategy}",)
    reference = serial(config)
    sim = run(config + on_ray(cluster, "2", "1", "engine.worker_backend=vectorized"))
    for name, want in reference.params.items():
        assert float((sim.params[name] - want).norm() / want.norm()) <= 1e-5, name
    assert sim.client_states.client_ids() == reference.client_states.client_ids()


def test_vectorized_workers_refuse_what_the_vectorized_backend_refuses_in_one_line(cluster):
    overrides = ("trainer.name=fedlabel", "data.label_ratio=0.5", *on_ray(cluster, "1", "1"))
    with pytest.raises(ConfigError, match="trains one client at a time.*set engine.worker_backend=serial") as err:
        run((*QUICKSTART_SHORT, *overrides, "engine.worker_backend=vectorized"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("strategy", ["scaffold", "fedld"])
def test_client_state_and_all_uploads_travel_through_ray(cluster, strategy):
    """SCAFFOLD's control variates go out with the plan and come back; FedLD sees every upload."""
    config = PARTIAL + (f"strategy.name={strategy}",)
    reference = serial(config)
    sim = run(config + on_ray(cluster))
    assert_same_run(sim, reference)
    ids = reference.client_states.client_ids()
    assert sim.client_states.client_ids() == ids and (strategy != "scaffold" or ids)
    for cid in ids:
        mine, theirs = sim.client_states.get(cid), reference.client_states.get(cid)
        assert all(torch.equal(mine["c"][k], theirs["c"][k]) for k in theirs["c"])


def test_byzantine_uploads_are_corrupted_the_same_on_ray(cluster):
    """Gaussian attackers against Krum: the workers send the server what serial's clients send."""
    config = PARTIAL + ("strategy.name=krum", "strategy.num_malicious=1", "attack.name=gaussian",
                        "attack.fraction=0.25")
    assert_same_run(run(config + on_ray(cluster)), serial(config))


def test_workers_spread_over_both_nodes_and_leave_nothing_behind(cluster):
    class CountWorkers(Callback):
        def on_round_end(self, sim, record):
            self.alive = len(pool_processes())

    counter = CountWorkers()
    sim = run(PARTIAL + on_ray(cluster, "2", str(NODE_CPUS)), [counter])
    assert len(set(sim.backend.worker_nodes)) == 2  # one worker per node: they cannot share one
    assert_same_run(sim, serial(PARTIAL, NODE_CPUS))
    assert counter.alive == 2
    assert not ray.is_initialized()  # disconnected from the joined cluster, which keeps running
    assert wait_until(lambda: not pool_processes())


# --------------------------------------------------------------------------- failures


KILLER = '''
import os, signal
from dataclasses import dataclass
from strategies.fedavg import FedAvg

@dataclass
class Killer(FedAvg):
    """FedAvg whose worker kills its own process when a client starts while `arm_file` exists
    (once: the first such client removes the file; always: every client while it exists)."""

    arm_file: str = ""
    once: bool = True

    def client_begin(self, ctx):
        try:
            if self.once:
                os.unlink(self.arm_file)
            else:
                os.stat(self.arm_file)
        except FileNotFoundError:
            return super().client_begin(ctx)
        os.kill(os.getpid(), signal.SIGKILL)
'''


class ArmAfterRound(Callback):
    """Creates the arm file when round `round_` ends, so the next round's first client is killed."""

    def __init__(self, path: Path, round_: int = 1) -> None:
        self.path, self.round = path, round_

    def on_round_end(self, sim, record):
        if record["round"] == self.round:
            self.path.touch()


def killer(tmp_path: Path, once: bool) -> tuple[str, ...]:
    plugin = tmp_path / "killer.py"
    plugin.write_text(KILLER)
    return (f"strategy.name={plugin}:Killer", f"strategy.arm_file={tmp_path / 'arm'}",
            f"strategy.once={'true' if once else 'false'}")


def test_killed_worker_is_replaced_and_its_share_retried(cluster, tmp_path):
    sim = run(PARTIAL + killer(tmp_path, once=True) + on_ray(cluster, "2", "1", "engine.max_retries=1"),
              [ArmAfterRound(tmp_path / "arm")])
    assert not (tmp_path / "arm").exists()  # a worker did die in round 2
    assert_same_run(sim, serial(PARTIAL))


def test_exhausted_retries_stop_the_run_with_one_line_and_keep_finished_rounds(cluster, tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(WorkerPoolError) as err:
        run(PARTIAL + killer(tmp_path, once=False) + on_ray(cluster, "2", "1", "engine.max_retries=1"),
            [RunFolder(folder), ArmAfterRound(tmp_path / "arm")])
    message = str(err.value)
    assert "died in round 2" in message and "engine.max_retries=1" in message and "\n" not in message
    assert list(pd.read_csv(folder / "metrics.csv")["round"]) == [1]
    assert not ray.is_initialized()
    assert wait_until(lambda: not pool_processes())


def test_diverging_client_is_reported_as_on_serial(cluster):
    config = PARTIAL + ("train.lr=1e30",)
    with pytest.raises(TrainingDiverged) as expected:
        run(config)
    with pytest.raises(TrainingDiverged) as got:
        run(config + on_ray(cluster))
    assert str(got.value) == str(expected.value)


def test_more_cpus_than_the_cluster_has_is_one_line_before_training(cluster):
    sim = Simulation(small_config(*on_ray(cluster, "5", "1")))
    with pytest.raises(ConfigError) as err:
        sim.run()
    assert str(err.value).startswith("engine.workers=5 with engine.cpus_per_worker=1")
    assert f"has {2 * NODE_CPUS:g} CPUs" in str(err.value) and "\n" not in str(err.value)
    assert sim.round == 0 and not ray.is_initialized()


def test_unreachable_cluster_is_one_line():
    sim = Simulation(small_config("engine.backend=ray", "engine.ray_address=127.0.0.1:9"))
    with pytest.raises(ConfigError, match="cannot reach the Ray cluster at engine.ray_address='127.0.0.1:9'"):
        sim.run()


# --------------------------------------------------------------------------- local instance


def test_local_instance_is_shut_down_after_ctrl_c(tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) mid-run: exit 130, one line,
    finished rounds on disk, and every process the run started (Ray's and the workers) gone."""
    out = tmp_path / "run"
    cli_args = ["run", str(QUICKSTART), "--quiet", "--out", str(out), "--set", "engine.device=cpu",
                "--set", "engine.backend=ray", "--set", "engine.workers=2", "--set", "train.rounds=100000"]
    # As a terminal's foreground job has it: Ctrl-C raises KeyboardInterrupt, even when this test
    # process runs as a background job (whose children inherit SIGINT ignored).
    launcher = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        f"sys.argv = ['fedsim', *{cli_args!r}]; runpy.run_module('fedsim.cli', run_name='__main__')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher], cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        round_done = wait_until(lambda: metrics_rows(out) >= 2, timeout=120)
        assert round_done, proc.stderr.read() if proc.poll() is not None else "no round finished in time"
        started: list[int] = []

        def pool_seen() -> bool:  # polled: one look, right after round 1, missed the pool once under load
            started[:] = descendants(proc.pid)
            return any("PoolWorker" in cmdline(p) for p in started)

        assert wait_until(pool_seen, timeout=60), [cmdline(p) for p in started]
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted")
    assert metrics_rows(out) >= 2
    assert wait_until(lambda: not [p for p in started if alive(p)]), [cmdline(p) for p in started if alive(p)]


# --------------------------------------------------------------------------- process helpers (Linux /proc)


def wait_until(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def metrics_rows(run_dir: Path) -> int:
    path = run_dir / "metrics.csv"
    return len(path.read_text().splitlines()) if path.exists() else 0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def pool_processes() -> list[int]:
    """Live Ray actor processes of this backend started under this test process (the cluster's)."""
    return [p for p in descendants(os.getpid()) if cmdline(p).startswith("ray::PoolWorker") and alive(p)]
