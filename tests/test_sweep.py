"""Sweeps: the whole grid is validated up front, cells are isolated, a killed sweep resumes."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fedsim.cli import app
from fedsim.errors import ConfigError
from fedsim.report import make_report
from fedsim.results import load_weights
from fedsim.sweep import SweepListener, cell_status, parse_grid, run_sweep, split_values
from tests.conftest import QUICKSTART, ROOT

SMALL = [
    "data.num_clients=10",
    "train.rounds=8",
    "train.local_epochs=1",
    "engine.device=cpu",
    "train.checkpoint_every=1",
    "train.fraction=0.5",
]
GRID = ["data.alpha=0.1,1", "strategy.name=fedavg,scaffold"]
SEEDS = [0, 1]
TIMING = ["round_s_mean", "round_s_std"]

# Strategies that fail in round 1: one raises (a bug in a plugin), one takes its worker process down.
FAILING_STRATEGIES = """
import os, signal
from dataclasses import dataclass
from fedsim.strategy import Strategy

@dataclass
class Raises(Strategy):
    def server_update(self, params, server_state, aggregate, info):
        raise ValueError("bug in a plugin")

@dataclass
class KillsWorker(Strategy):
    def server_update(self, params, server_state, aggregate, info):
        os.kill(os.getpid(), signal.SIGKILL)
"""


class Recorder(SweepListener):
    """Keeps every event a sweep emits, in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def planned(self, total, skipped):
        self.events.append(("planned", total, skipped))

    def cell_started(self, name):
        self.events.append(("started", name))

    def cell_finished(self, name):
        self.events.append(("finished", name))

    def cell_failed(self, name, error):
        self.events.append(("failed", name, error.strip().splitlines()[-1]))


def sweep(out, jobs=2, grid=GRID, seeds=SEEDS, overrides=SMALL, listener=None):
    return run_sweep(QUICKSTART, grid, seeds, overrides, out, jobs, listener)


def comparable(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=TIMING)


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """An uninterrupted 2 x 2 x 2-seed sweep, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("sweep") / "reference"
    result = sweep(out)
    assert (result.total, result.finished, result.failed) == (8, 8, [])
    return out


def test_grid_values_split_at_top_level_commas():
    assert split_values("0.05,0.1, 100") == ["0.05", "0.1", "100"]
    assert split_values("[64,64],[128]") == ["[64,64]", "[128]"]
    assert split_values('"a,b",c') == ['"a,b"', "c"]
    assert parse_grid(["strategy.name=fedavg,scaffold_m"]) == {"strategy.name": ["fedavg", "scaffold_m"]}
    for bad, message in [
        ("data.alpha", "must look like key=v1,v2"),
        ("data.alpha=0.1,", "empty key or value"),
        ("seed=1,2", "--seeds"),
        ("data.alpha=1,1", "repeats a value"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_grid([bad])


def test_cells_have_readable_folders_and_a_manifest(finished_sweep):
    manifest = json.loads((finished_sweep / "sweep.json").read_text())
    assert manifest["grid"] == {"data.alpha": [0.1, 1], "strategy.name": ["fedavg", "scaffold"]}
    names = [c["name"] for c in manifest["cells"]]
    assert names[:3] == [
        "data.alpha=0.1__strategy.name=fedavg__seed=0",
        "data.alpha=0.1__strategy.name=fedavg__seed=1",
        "data.alpha=0.1__strategy.name=scaffold__seed=0",
    ]
    for cell in manifest["cells"]:
        config = (finished_sweep / cell["name"] / "config.toml").read_text()
        assert f"seed = {cell['seed']}" in config and cell["values"]["strategy.name"] in config
        assert cell_status(finished_sweep / cell["name"]) == "finished"


def test_rerunning_a_finished_sweep_skips_every_cell(finished_sweep):
    recorder = Recorder()
    result = sweep(finished_sweep, listener=recorder)
    assert (result.skipped, result.finished, result.failed) == (8, 0, [])
    assert recorder.events == [("planned", 8, 8)]


def test_a_killed_sweep_rerun_gives_the_same_table(finished_sweep, tmp_path):
    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "fedsim.cli",
        "sweep",
        str(QUICKSTART),
        "--out",
        str(out),
        "--jobs",
        "2",
        "--seed-list",
        "0,1",
    ]
    for axis in GRID:
        command += ["--grid", axis]
    for text in SMALL:
        command += ["--set", text]
    proc = subprocess.Popen(
        command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while not _finished_and_in_progress(out):
            assert proc.poll() is None and time.monotonic() < deadline, (
                "sweep ended before it could be killed"
            )
            time.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers, mid-cell
        proc.wait()
    done_before = sum(cell_status(cell) == "finished" for cell in out.iterdir() if cell.is_dir())
    assert 1 <= done_before < 8

    result = sweep(out)
    assert result.skipped == done_before and result.finished == 8 - done_before and not result.failed
    pd.testing.assert_frame_equal(
        comparable(make_report(out, 0.8).table),
        comparable(make_report(finished_sweep, 0.8).table),
        check_exact=True,
    )
    for cell in (c for c in out.iterdir() if c.is_dir()):
        resumed, reference = load_weights(cell), load_weights(finished_sweep / cell.name)
        assert all(torch.equal(resumed[k], reference[k]) for k in reference)
        assert list(pd.read_csv(cell / "metrics.csv")["round"]) == list(range(1, 9))


def _finished_and_in_progress(out) -> bool:
    """At least one cell finished and another one checkpointed but not finished."""
    if not out.is_dir():
        return False
    cells = [c for c in out.iterdir() if c.is_dir()]
    finished = [c for c in cells if cell_status(c) == "finished"]
    started = [c for c in cells if (c / "checkpoints").is_dir() and cell_status(c) is None]
    return bool(finished) and any(any((c / "checkpoints").glob("round_*")) for c in started)


def test_failing_cells_are_recorded_and_the_others_finish(tmp_path):
    plugin = tmp_path / "failing.py"
    plugin.write_text(FAILING_STRATEGIES)
    grid = [f"strategy.name={plugin}:KillsWorker,{plugin}:Raises,fedavg"]
    recorder = Recorder()
    result = sweep(
        tmp_path / "out", jobs=1, grid=grid, seeds=[0], overrides=[*SMALL, "train.rounds=2"], listener=recorder
    )
    assert result.finished == 1 and len(result.failed) == 2
    killed, raised, fine = (
        next((tmp_path / "out").glob(f"*{name}__seed=0")) for name in ("KillsWorker", "Raises", "fedavg")
    )
    assert [event[:2] for event in recorder.events] == [
        ("planned", 3),
        ("started", killed.name),
        ("failed", killed.name),
        ("started", raised.name),
        ("failed", raised.name),
        ("started", fine.name),
        ("finished", fine.name),
    ]
    assert "worker process died" in recorder.events[2][2]
    assert recorder.events[4][2] == "ValueError: bug in a plugin"
    assert "worker process died" in (killed / "error.txt").read_text()
    assert "ValueError: bug in a plugin" in (raised / "error.txt").read_text()
    assert cell_status(raised) == cell_status(killed) == "failed"
    assert cell_status(fine) == "finished"


def test_a_bad_grid_value_stops_the_sweep_before_any_cell_runs(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "sweep",
            str(QUICKSTART),
            "--grid",
            "data.alpha=0.1,-1",
            "--seeds",
            "2",
            "--out",
            str(tmp_path / "s"),
        ],
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: data.alpha must be > 0, got -1.0"]
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        (["--seeds", "2", "--seed-list", "0,1"], "not both"),
        (["--seed-list", "0,x"], "must be integers"),
        (["--grid", "data.alpah=1,2"], "did you mean 'data.alpha'"),
        (["--grid", "data.alpha=1,2", "--set", "data.alpha=3"], "both a --set and a --grid"),
        (["--jobs", "0"], "--jobs must be >= 1"),
    ],
)
def test_sweep_mistakes_are_one_line(arguments, fragment, tmp_path):
    result = CliRunner().invoke(app, ["sweep", str(QUICKSTART), "--out", str(tmp_path / "s"), *arguments])
    assert result.exit_code == 2 and fragment in result.output, result.output


def test_a_cell_folder_from_another_config_is_refused(finished_sweep, tmp_path):
    with pytest.raises(ConfigError, match=r"different config \(train.lr differ\)"):
        sweep(finished_sweep, overrides=[*SMALL, "train.lr=0.01"])
