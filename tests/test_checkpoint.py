"""Checkpoint and resume: a resumed run ends bit for bit where an uninterrupted one does."""

import json
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fedsim.checkpoint import latest_checkpoint, load_checkpoint, prepare_run, save_checkpoint
from fedsim.cli import app
from fedsim.engine import Callback, Simulation
from fedsim.errors import ConfigError
from fedsim.results import load_weights
from tests.conftest import ROOT, small_config

# SCAFFOLD with partial participation: server state (c) and per-client state (c_i) both matter.
STATEFUL = ["strategy.name=scaffold", "train.fraction=0.5", "train.rounds=6", "train.checkpoint_every=2"]
DETERMINISTIC_COLUMNS = ["round", "test_accuracy", "test_loss", "train_loss", "num_clients", "lr"]
# client states all in RAM, or two of a cohort's five in RAM and the rest spilled to the run folder
BUDGETS = {"unbounded": "engine.client_state_memory=0", "spilled": "engine.client_state_memory=80000"}


class CrashAfter(Callback):
    """Raises once `round_` is done, before that round is checkpointed: a crash between checkpoints."""

    def __init__(self, round_: int) -> None:
        self.round = round_

    def on_round_done(self, sim: Simulation) -> None:
        if sim.round == self.round:
            raise RuntimeError("simulated crash")


def assert_same_run(a, b):
    """Same final weights (bit for bit) and same metrics, timings aside."""
    wa, wb = load_weights(a), load_weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ma, mb = pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv")
    pd.testing.assert_frame_equal(ma[DETERMINISTIC_COLUMNS], mb[DETERMINISTIC_COLUMNS], check_exact=True)
    sa, sb = json.loads((a / "summary.json").read_text()), json.loads((b / "summary.json").read_text())
    assert sa["status"] == sb["status"] == "finished" and sa["final_accuracy"] == sb["final_accuracy"]


def test_a_run_draws_nothing_from_the_global_generators():
    """Why a checkpoint needs no RNG state: every draw comes from (seed, round, client) generators."""
    before = torch.get_rng_state(), np.random.get_state(), random.getstate()
    config = small_config(*STATEFUL, "train.dropout=0.3", "train.min_local_work=0.5")
    Simulation(config).run()
    after = torch.get_rng_state(), np.random.get_state(), random.getstate()
    assert torch.equal(before[0], after[0])
    assert all(np.array_equal(x, y) for x, y in zip(before[1], after[1])) and before[2] == after[2]


@pytest.mark.parametrize("budget", BUDGETS.values(), ids=BUDGETS.keys())
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, budget):
    config = small_config(*STATEFUL, budget)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_run(config, tmp_path / "crashed", [CrashAfter(5)]).run()
    assert len(pd.read_csv(tmp_path / "crashed" / "metrics.csv")) == 5
    assert latest_checkpoint(tmp_path / "crashed").name == "round_000004"

    resumed = prepare_run(config, tmp_path / "crashed", resume=True)
    assert resumed.round == 4 and len(resumed.client_states) > 0
    resumed.run()
    reference = prepare_run(config, tmp_path / "reference")
    reference.run()

    assert_same_run(tmp_path / "crashed", tmp_path / "reference")
    assert resumed.client_states.client_ids() == reference.client_states.client_ids()
    for cid in reference.client_states.client_ids():
        a, b = resumed.client_states.get(cid)["c"], reference.client_states.get(cid)["c"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(
        torch.equal(resumed.server_state["c"][k], reference.server_state["c"][k]) for k in resumed.params
    )
    summary = json.loads((tmp_path / "crashed" / "summary.json").read_text())
    assert summary["rounds"] == 6 and summary["wall_s"] > 0


def test_only_the_newest_complete_checkpoint_is_kept(tmp_path):
    config = small_config(*STATEFUL)
    sim = prepare_run(config, tmp_path)
    sim.run()
    root = tmp_path / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["round_000006"]
    (root / ".round_000008.tmp").mkdir()  # what a kill in the middle of a write leaves behind
    assert latest_checkpoint(tmp_path).name == "round_000006"
    state = load_checkpoint(tmp_path, config)
    assert state.round == 6 and [r["round"] for r in state.history] == list(range(1, 7))
    assert all(torch.equal(state.params[k], sim.params[k]) for k in sim.params)
    save_checkpoint(tmp_path, state, config)  # rewriting a round replaces it and cleans the leftover
    assert [p.name for p in root.iterdir()] == ["round_000006"]


def test_resume_refuses_a_different_config(tmp_path):
    config = small_config(*STATEFUL)
    with pytest.raises(RuntimeError):
        prepare_run(config, tmp_path, [CrashAfter(3)]).run()
    with pytest.raises(ConfigError, match=r"different config \(train.lr differ\)"):
        prepare_run(small_config(*STATEFUL, "train.lr=0.1"), tmp_path, resume=True)


def test_a_checkpoint_of_the_old_format_is_one_line(tmp_path):
    """Checkpoints written before the segment store kept client states inline; refused, not a KeyError."""
    from safetensors.torch import load_file, save_file

    from fedsim.checkpoint import TENSORS_FILE

    config = small_config(*STATEFUL)
    prepare_run(config, tmp_path).run()
    tensors = latest_checkpoint(tmp_path) / TENSORS_FILE
    save_file({k: v for k, v in load_file(tensors).items() if not k.startswith("clients/")}, tensors)
    with pytest.raises(ConfigError, match="written by an older fedsim.*start a new run") as err:
        load_checkpoint(tmp_path, config)
    assert "\n" not in str(err.value)


def test_checkpoint_every_must_not_be_negative():
    with pytest.raises(ConfigError, match="train.checkpoint_every must be >= 0"):
        Simulation(small_config("train.checkpoint_every=-1"))


@pytest.mark.parametrize("budget", BUDGETS.values(), ids=BUDGETS.keys())
def test_run_killed_with_sigkill_mid_round_resumes_to_the_uninterrupted_result(tmp_path, budget):
    config = small_config(*STATEFUL, budget, "train.rounds=8", "train.checkpoint_every=1")
    (tmp_path / "config.toml").write_text(config.to_toml())
    killed = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "fedsim.cli",
        "run",
        str(tmp_path / "config.toml"),
        "--out",
        str(killed),
        "-q",
    ]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while latest_checkpoint(killed) is None or latest_checkpoint(killed).name < "round_000003":
            assert proc.poll() is None and time.monotonic() < deadline, "run ended before it could be killed"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # round 4 (or the writing of its checkpoint) is under way
    finally:
        proc.kill()
        proc.wait()
    assert not (killed / "summary.json").exists()

    result = CliRunner().invoke(app, ["run", "--resume", str(killed), "--quiet"])
    assert result.exit_code == 0, result.output
    prepare_run(config, tmp_path / "reference").run()
    assert_same_run(killed, tmp_path / "reference")
    rounds = pd.read_csv(killed / "metrics.csv")["round"]
    assert list(rounds) == list(range(1, 9))  # no duplicate rows from before the kill


def test_resume_command_mistakes_are_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["run", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "is not a run folder" in result.output
    result = runner.invoke(
        app, ["run", str(ROOT / "experiments" / "quickstart.toml"), "--resume", str(tmp_path)]
    )
    assert result.exit_code == 2 and "drop CONFIG" in result.output
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 2 and "--resume RUN_DIR" in result.output
