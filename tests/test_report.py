"""Reports: mean ± std over seeds, failed and unfinished cells counted, plots written; TensorBoard logs."""

import importlib.util
import json
import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedsim.cli import app
from fedsim.errors import ConfigError
from fedsim.report import make_report
from fedsim.tensorboard_logger import TensorBoardLogger
from tests.conftest import QUICKSTART

PNG = b"\x89PNG\r\n\x1a\n"

# Accuracy per round of each finished cell: (alpha, strategy, seed) -> curve.
CURVES = {
    (0.1, "fedavg", 0): [0.3, 0.5, 0.6],
    (0.1, "fedavg", 1): [0.4, 0.7, 0.8],
    (0.1, "scaffold", 0): [0.5, 0.9, 0.85],
    (1, "fedavg", 0): [0.6, 0.8, 0.9],
    (1, "fedavg", 1): [0.7, 0.85, 0.95],
}
FAILED = (0.1, "scaffold", 1)
UNFINISHED = [(1, "scaffold", 0), (1, "scaffold", 1)]


def write_run(folder, curve, status="finished", error=None):
    folder.mkdir(parents=True)
    rounds = range(1, len(curve) + 1)
    metrics = {"round": rounds, "test_accuracy": curve, "round_s": 0.5, "wall_s": [0.5 * r for r in rounds]}
    pd.DataFrame(metrics).to_csv(folder / "metrics.csv", index=False)
    if status is not None:
        (folder / "summary.json").write_text(json.dumps({"status": status, "error": error, "seed": 0}))


def fake_sweep(root):
    """A sweep folder as `fedsim sweep` leaves it, with one failed and two unfinished cells."""
    cells = []
    for alpha in (0.1, 1):
        for strategy in ("fedavg", "scaffold"):
            for seed in (0, 1):
                name = f"data.alpha={alpha}__strategy.name={strategy}__seed={seed}"
                cells.append(
                    {"name": name, "values": {"data.alpha": alpha, "strategy.name": strategy}, "seed": seed}
                )
                key = (alpha, strategy, seed)
                if key in CURVES:
                    write_run(root / name, CURVES[key])
                elif key == FAILED:
                    write_run(
                        root / name, [0.2], "failed", "training diverged: client 3 had loss nan in round 2"
                    )
                else:
                    write_run(root / name, [0.2], status=None)  # killed mid-run: no summary
    grid = {"data.alpha": [0.1, 1], "strategy.name": ["fedavg", "scaffold"]}
    (root / "sweep.json").write_text(json.dumps({"grid": grid, "seeds": [0, 1], "cells": cells}))
    return root


def test_table_has_mean_and_std_over_seeds_and_counts_failures(tmp_path):
    report = make_report(fake_sweep(tmp_path), target=0.8)
    table = report.table.set_index(["data.alpha", "strategy.name"])
    row = table.loc[(0.1, "fedavg")]
    assert row["seeds"] == 2 and row["failed"] == 0
    assert row["final_accuracy_mean"] == pytest.approx(0.7)
    assert row["final_accuracy_std"] == pytest.approx(math.sqrt(0.02))  # sample std of 0.6, 0.8
    assert row["rounds_to_target_mean"] == 3 and row["reached_target"] == 1  # only seed 1 reaches 0.8
    row = table.loc[(0.1, "scaffold")]
    assert (row["seeds"], row["failed"]) == (1, 1)
    assert row["best_accuracy_mean"] == pytest.approx(0.9) and math.isnan(row["final_accuracy_std"])
    row = table.loc[(1, "fedavg")]
    assert row["rounds_to_target_mean"] == pytest.approx(2.0) and row["round_s_mean"] == pytest.approx(0.5)
    row = table.loc[(1, "scaffold")]
    assert (row["seeds"], row["unfinished"]) == (0, 2) and math.isnan(row["final_accuracy_mean"])

    saved = pd.read_csv(tmp_path / "report.csv")
    assert len(saved) == 4 and list(saved.columns[:2]) == ["data.alpha", "strategy.name"]
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 8


def test_markdown_shows_failures_and_targets_not_reached(tmp_path):
    markdown = make_report(fake_sweep(tmp_path), target=0.95).markdown
    assert (tmp_path / "report.md").read_text() == markdown
    lines = markdown.splitlines()
    assert (
        "| data.alpha | strategy.name | seeds | final accuracy | best accuracy | rounds to 0.95 |" in lines[4]
    )
    assert "| 0.1 | fedavg | 2 | 0.700 ± 0.141 | 0.700 ± 0.141 | not reached |" in markdown
    assert "| 1 | fedavg | 2 | 0.925 ± 0.035 | 0.925 ± 0.035 | 3.0 (1/2) |" in markdown
    assert "| 1 | scaffold | 0 | unfinished | unfinished | unfinished | unfinished | 0 | 2 |" in markdown
    assert "training diverged: client 3 had loss nan in round 2" in markdown
    assert "2 cell(s) unfinished" in markdown


def test_plots_are_written(tmp_path):
    files = make_report(fake_sweep(tmp_path), target=0.8).files
    for name in ("accuracy_vs_round.png", "final_accuracy_vs_alpha.png"):
        assert tmp_path / name in files
        assert (tmp_path / name).read_bytes()[:8] == PNG


def test_a_single_run_folder_is_summarised(tmp_path):
    run = tmp_path / "my_run"
    write_run(run, [0.5, 0.85, 0.8])
    report = make_report(run, target=0.8)
    assert list(report.table["run"]) == ["my_run"] and report.table["final_accuracy_mean"][0] == 0.8
    assert (run / "accuracy_vs_round.png").read_bytes()[:8] == PNG
    assert not (run / "final_accuracy_vs_alpha.png").exists()


def test_a_sweep_over_seeds_only_is_one_row(tmp_path):
    cells = [{"name": f"seed={seed}", "values": {}, "seed": seed} for seed in (0, 1)]
    (tmp_path / "sweep.json").write_text(json.dumps({"grid": {}, "seeds": [0, 1], "cells": cells}))
    for seed, curve in enumerate(([0.5, 0.7], [0.6, 0.9])):
        write_run(tmp_path / f"seed={seed}", curve)
    report = make_report(tmp_path, target=0.8)
    assert len(report.table) == 1 and report.table["final_accuracy_mean"][0] == pytest.approx(0.8)
    assert "| 2 | 0.800 ± 0.141 |" in report.markdown
    assert (tmp_path / "accuracy_vs_round.png").exists()


def test_runs_with_evaluation_sets_report_validation_and_client_accuracy(tmp_path):
    cells = [{"name": f"seed={seed}", "values": {}, "seed": seed} for seed in (0, 1)]
    (tmp_path / "sweep.json").write_text(json.dumps({"grid": {}, "seeds": [0, 1], "cells": cells}))
    for seed, (val, worst) in enumerate(([0.7, 0.2], [0.9, 0.4])):
        run = tmp_path / f"seed={seed}"
        write_run(run, [0.5, 0.8])
        metrics = pd.read_csv(run / "metrics.csv").assign(
            val_accuracy=[0.1, val], client_accuracy_mean=0.6, client_accuracy_p10=0.3, client_accuracy_min=[0, worst]
        )
        metrics.to_csv(run / "metrics.csv", index=False)
        rows = [(r, c, 10, acc) for r in (1, 2) for c, acc in enumerate([worst, 0.6, 1.0])]
        pd.DataFrame(rows, columns=["round", "client_id", "num_samples", "accuracy"]).assign(loss=1.0).to_csv(
            run / "client_metrics.csv", index=False
        )
    report = make_report(tmp_path, target=0.8)
    assert report.table["val_accuracy_mean"][0] == pytest.approx(0.8)
    assert report.table["client_accuracy_min_mean"][0] == pytest.approx(0.3)
    assert "val accuracy | client acc mean | client acc p10 | worst client" in report.markdown
    assert "| 0.800 ± 0.141 | 0.600 ± 0.000 | 0.300 ± 0.000 | 0.300 ± 0.141 |" in report.markdown
    assert (tmp_path / "client_accuracy_cdf.png").read_bytes()[:8] == PNG


def test_runs_without_evaluation_sets_keep_the_plain_table(tmp_path):
    report = make_report(fake_sweep(tmp_path), target=0.8)
    assert "val accuracy" not in report.markdown and not (tmp_path / "client_accuracy_cdf.png").exists()


def test_report_mistakes_are_one_line(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "neither a sweep folder" in result.output
    with pytest.raises(ConfigError, match="--target must be in"):
        make_report(fake_sweep(tmp_path), target=80)


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="the tensorboard extra is not installed"
)
def test_tensorboard_logs_every_evaluated_round(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ["--set", "train.rounds=2", "--set", "data.num_clients=5", "--set", "engine.device=cpu"]
    result = CliRunner().invoke(
        app, ["run", str(QUICKSTART), *args, "--out", str(tmp_path), "--tensorboard", "-q"]
    )
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("test_accuracy")] == [1, 2]


def test_tensorboard_without_the_package_is_one_clear_error(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a),
    )
    with pytest.raises(ConfigError, match=r"pip install 'fedsim\[tensorboard\]'"):
        TensorBoardLogger(tmp_path)
