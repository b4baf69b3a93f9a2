"""The run folder is complete and honest: never overwritten silently, failures and interrupts
recorded as what they are, every hyperparameter and the fedsim that ran it written down."""

import json
import os
import stat
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from fedsim.checkpoint import prepare_run
from fedsim.cli import app
from fedsim.config import load_config
from fedsim.data import load_dataset
from fedsim.divergence import DivergenceWatch
from fedsim.errors import ConfigError, PluginFailed
from fedsim.models import build_model
from fedsim.plugins import resolved
from fedsim.results import claim_run_folder, load_model, load_weights, save_weights
from tests.conftest import QUICKSTART, ROOT, small_config

FAILING_STRATEGY = """
from dataclasses import dataclass
from strategies.fedavg import FedAvg

@dataclass
class Broken(FedAvg):
    name = "broken"
    fail_in: int = 2

    def server_update(self, params, server_state, aggregate, info):
        if info.round == self.fail_in:
            return {}["missing"], None
        return super().server_update(params, server_state, aggregate, info)
"""

FAILING_TRAINER = """
from dataclasses import dataclass
from fedsim.trainer import ClientTrainer

@dataclass
class Broken(ClientTrainer):
    name = "broken_trainer"

    def update(self, params, grads, opt, lr):
        raise ValueError("no update today")
"""

INTERRUPTING_STRATEGY = """
from dataclasses import dataclass
from strategies.fedavg import FedAvg

@dataclass
class CtrlC(FedAvg):
    name = "ctrl_c"

    def server_update(self, params, server_state, aggregate, info):
        if info.round == 2:
            raise KeyboardInterrupt
        return super().server_update(params, server_state, aggregate, info)
"""


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def sets(*overrides: str) -> list[str]:
    base = ["data.num_clients=5", "train.rounds=3", "train.local_epochs=1", "engine.device=cpu", *overrides]
    return [arg for o in base for arg in ("--set", o)]


def summary(run) -> dict:
    return json.loads((run / "summary.json").read_text())


# ---------------------------------------------------------------- claiming the folder
def test_an_existing_file_or_unwritable_path_is_refused_before_any_work(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is an existing file"):
        claim_run_folder(tmp_path / "f")
    with pytest.raises(ConfigError, match="cannot write run folder '/proc/x'"):
        claim_run_folder("/proc/x")
    readonly = tmp_path / "ro"
    readonly.mkdir(mode=0o555)
    if os.geteuid() != 0:  # root writes through the mode bits
        with pytest.raises(ConfigError, match="cannot write run folder"):
            claim_run_folder(readonly / "run")


def test_a_run_folder_is_refused_naming_resume_and_force_which_clears_it(tmp_path):
    run = tmp_path / "run"
    assert cli("run", str(QUICKSTART), *sets(), "-q", "--out", str(run)).exit_code == 0
    (run / "report.md").write_text("a report of the old run")
    again = cli("run", str(QUICKSTART), *sets("train.rounds=2"), "-q", "--out", str(run))
    assert again.exit_code == 2
    assert f"fedsim run --resume {run}" in again.output and "--force" in again.output
    assert summary(run)["rounds"] == 3  # untouched
    forced = cli("run", str(QUICKSTART), *sets("train.rounds=2"), "-q", "--out", str(run), "--force")
    assert forced.exit_code == 0, forced.output
    assert summary(run)["rounds"] == 2 and not (run / "report.md").exists()


def test_a_non_empty_folder_that_is_no_run_folder_is_never_cleared(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="not a run folder"):
        claim_run_folder(tmp_path, overwrite=True)
    assert (tmp_path / "thesis.tex").exists()
    claim_run_folder(tmp_path / "empty")  # a new or empty folder is fine
    claim_run_folder(tmp_path / "empty")


@pytest.mark.parametrize(
    "setup, fragment",
    [("file", "is an existing file"), ("run", "fedsim run --resume")],
)
def test_a_bad_out_is_one_line_and_exit_2_from_the_cli(setup, fragment, tmp_path):
    out = tmp_path / "out"
    if setup == "file":
        out.write_text("x")
    else:
        out.mkdir()
        (out / "config.toml").write_text("name = 'old'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", str(QUICKSTART), "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "COLUMNS": "400"},
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- what the folder records
def test_summary_records_every_hyperparameter_the_backend_auto_chose_and_the_fedsim(tmp_path):
    config = small_config("strategy.name=fedavgm", "engine.backend=auto", "engine.threads=1", "data.label_ratio=1")
    sim = prepare_run(config, tmp_path)
    sim.run()
    s = summary(tmp_path)
    assert s["hyperparameters"]["strategy"]["name"] == "fedavgm"
    assert {"server_lr", "momentum"} <= set(s["hyperparameters"]["strategy"])  # defaults written out
    assert s["hyperparameters"]["model"]["hidden"] == [128]
    assert s["backend"] == "vectorized" and s["threads"] == 1 and s["label_ratio"] == 1.0
    assert s["fedsim_version"] and s["fedsim_commit"] != ""
    written = (tmp_path / "config.toml").read_text()
    assert "server_lr" in written and "momentum" in written  # the resolved config too


def test_weights_are_readable_like_every_other_file_and_rebuild_the_model(tmp_path):
    sim = prepare_run(small_config(), tmp_path)
    sim.run()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir() if p.is_file()}
    assert modes["model.safetensors"] == modes["config.toml"], modes
    model = load_model(tmp_path)
    for name, tensor in load_weights(tmp_path).items():
        assert torch.equal(model.state_dict()[name], tensor)
    x, y = load_dataset("digits", seed=0).tensors("test")
    with torch.no_grad():
        correct = int((model(x).argmax(1) == y).sum())
    assert correct / len(y) == summary(tmp_path)["final_accuracy"]


def test_weights_record_the_datasets_vocabulary_so_a_token_model_rebuilds(tmp_path):
    config = resolved(load_config(QUICKSTART, ["model.name=text", "model.hidden=16"]))
    (tmp_path / "config.toml").write_text(config.to_toml())
    trained = build_model(config.model, (12,), 2, seed=5, vocab_size=40)
    save_weights(tmp_path / "model.safetensors", trained.state_dict(), "text", (12,), 2, vocab_size=40)
    model = load_model(tmp_path)
    assert model.embed.num_embeddings == 40
    for name, tensor in trained.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor)


def test_load_model_of_an_unfinished_run_says_so(tmp_path):
    with pytest.raises(ConfigError, match="only a finished run has final weights"):
        load_model(tmp_path)


# ---------------------------------------------------------------- failures, interrupts, divergence
def test_an_exception_in_a_strategy_hook_names_the_plugin_hook_and_round(tmp_path):
    (tmp_path / "broken.py").write_text(FAILING_STRATEGY)
    run = tmp_path / "run"
    result = cli("run", str(QUICKSTART), *sets(f"strategy.name={tmp_path / 'broken.py'}:Broken"), "-q",
                 "--out", str(run))
    assert result.exit_code == 1
    message = "strategy 'broken' in server_update raised KeyError: 'missing' (round 2)"
    assert message in result.output and f"{run / 'error.txt'}" in result.output
    assert summary(run)["status"] == "failed" and summary(run)["error"] == message
    assert "Traceback" in (run / "error.txt").read_text() and "server_update" in (run / "error.txt").read_text()


@pytest.mark.parametrize("backend", ["serial", "vectorized"])
def test_an_exception_in_a_trainer_hook_names_the_client(backend, tmp_path):
    (tmp_path / "broken.py").write_text(FAILING_TRAINER)
    config = small_config(f"trainer.name={tmp_path / 'broken.py'}:Broken", f"engine.backend={backend}")
    with pytest.raises(PluginFailed) as caught:
        prepare_run(config, tmp_path / "run").run()
    who = "client 0" if backend == "serial" else "one of clients 0, 1, 2, 3, 4, ..."
    assert str(caught.value) == f"trainer 'broken_trainer' in update raised ValueError: no update today (round 1, {who})"
    assert "no update today" in (tmp_path / "run" / "error.txt").read_text()


def test_ctrl_c_is_interrupted_not_failed_and_says_how_to_resume(tmp_path):
    (tmp_path / "ctrl_c.py").write_text(INTERRUPTING_STRATEGY)
    run = tmp_path / "run"
    result = cli("run", str(QUICKSTART), *sets(f"strategy.name={tmp_path / 'ctrl_c.py'}:CtrlC",
                                               "train.checkpoint_every=1"), "--out", str(run))
    assert result.exit_code == 130
    assert f"interrupted after round 1; `fedsim run --resume {run}` continues it from its checkpoint of round 1" \
        in result.output
    assert result.output.count("round 1/3") == 1  # the progress line once
    assert summary(run)["status"] == "interrupted" and summary(run)["error"] is None


def test_a_diverging_run_warns_in_the_progress_and_the_summary_but_finishes(tmp_path):
    run = tmp_path / "run"
    result = cli("run", str(QUICKSTART), *sets("train.lr=1000"), "--out", str(run))
    assert result.exit_code == 0, result.output
    assert "warning: diverging: round 1 test loss" in result.output and "(diverging)" in result.output
    assert summary(run)["status"] == "finished"
    assert summary(run)["warnings"][0].startswith("diverging: round 1 test loss")


def test_divergence_watch_flags_each_kind_once_and_can_be_turned_off():
    def record(round_, loss, accuracy):
        return {"round": round_, "test_loss": loss, "test_accuracy": accuracy}

    watch = DivergenceWatch(initial_loss=2.3, chance_accuracy=0.1, loss_factor=10, chance_rounds=3)
    assert watch.check(record(1, 2.0, 0.5)) is None
    assert "test loss 30" in watch.check(record(2, 30.0, 0.5))
    assert watch.check(record(3, float("nan"), 0.5)) is None  # once per kind
    assert [watch.check(record(r, 2.0, 0.105)) for r in (4, 5)] == [None, None]
    assert "at chance (0.105) for 3 evaluated rounds up to round 6" in watch.check(record(6, 2.0, 0.105))
    quiet = DivergenceWatch(initial_loss=2.3, chance_accuracy=0.1, loss_factor=0, chance_rounds=0)
    assert all(quiet.check(record(r, 1e30, 0.1)) is None for r in range(1, 10))
    recovering = DivergenceWatch(initial_loss=2.3, chance_accuracy=0.1, loss_factor=10, chance_rounds=2)
    assert [recovering.check(record(r, 2.0, a)) for r, a in [(1, 0.1), (2, 0.6), (3, 0.1)]] == [None] * 3


def test_a_resumed_run_keeps_the_warnings_of_the_rounds_before(tmp_path):
    config = small_config("train.lr=1000", "train.checkpoint_every=1", "train.rounds=2")
    first = prepare_run(config, tmp_path)
    first.run()
    resumed = prepare_run(config, tmp_path, resume=True)
    assert resumed.warnings == first.warnings and len(first.warnings) >= 1
