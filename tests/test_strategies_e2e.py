"""Every strategy, and the example trimmed-mean plugin, runs end to end from the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsim.cli import app

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "experiments" / "quickstart.toml"
FAST = ["train.fraction=0.5", "train.rounds=3", "train.local_epochs=1", "data.num_clients=10", "engine.device=cpu"]


def run_cli(tmp_path: Path, *overrides: str) -> dict:
    out = tmp_path / "run"
    args = ["run", str(QUICKSTART), "--quiet", "--out", str(out)]
    for item in [*FAST, *overrides]:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize(
    "overrides",
    [
        ["strategy.name=fedavg"],
        ["strategy.name=fedavgm"],
        ["strategy.name=fedprox"],
        ["strategy.name=scaffold"],
        ["strategy.name=fedavg_m"],
        ["strategy.name=scaffold_m"],
        ["strategy.name=fedspeed"],
        ["strategy.name=fedspeed", "strategy.variant=fl_simulator"],
        ["strategy.name=fedld"],
    ],
    ids=lambda o: "-".join(v.split("=")[1] for v in o),
)
def test_strategy_runs_from_the_cli_with_partial_participation(tmp_path, overrides):
    summary = run_cli(tmp_path, *overrides)
    assert summary["status"] == "finished" and summary["rounds"] == 3
    assert math.isfinite(summary["final_accuracy"])


def test_trimmed_mean_file_plugin_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    summary = run_cli(tmp_path, "strategy.name=examples/trimmed_mean/trimmed_mean.py:TrimmedMean", "strategy.trim=0.2")
    assert summary["strategy"] == "examples/trimmed_mean/trimmed_mean.py:TrimmedMean"
    assert math.isfinite(summary["final_accuracy"])


def test_unknown_strategy_key_is_a_one_line_config_error(tmp_path):
    out = tmp_path / "run"
    args = ["run", str(QUICKSTART), "--quiet", "--out", str(out), "--set", "strategy.name=scaffold_m",
            "--set", "strategy.bta=0.2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "strategy.beta" in result.output
