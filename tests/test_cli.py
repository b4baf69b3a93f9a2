"""The command line: a run writes its folder; every input mistake is one line and exit code 2."""

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fedsim.cli import app
from tests.conftest import QUICKSTART, ROOT

runner = CliRunner()
SMALL = ["--set", "train.rounds=2", "--set", "data.num_clients=5", "--set", "engine.device=cpu"]


def test_run_writes_the_run_folder_and_prints_a_summary(tmp_path):
    result = runner.invoke(app, ["run", str(QUICKSTART), *SMALL, "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "final accuracy" in result.output
    assert (tmp_path / "r" / "summary.json").exists()


def test_list_names_every_registry():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    for name in ("digits", "mnist1d", "synthetic", "dirichlet", "quantity", "mlp", "cnn", "fedavg", "serial"):
        assert name in result.output


def test_run_help_explains_overrides():
    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0 and "--set" in result.output


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("data.alpah=0.1", "did you mean 'data.alpha'"),
        ("data.alpha=0", "data.alpha must be > 0"),
        ("train.fraction=2", "train.fraction must be in (0, 1]"),
        ("train.rounds=abc", "train.rounds' must be int"),
        ("data.num_clients=100000", "more clients than samples"),
        ("data.dataset=synthetic", "generates its clients (one per generator): set data.partitioner='natural'"),
        ("data.dataset=imagenet", "unknown dataset"),
        ("model.name=vit", "unknown model"),
        ("strategy.name=fedfoo", "unknown strategy 'fedfoo'"),
        ("data.partitioner=zipf", "unknown partitioner"),
        ("strategy.bogus=1", "unknown config key 'strategy.bogus'"),
        ("model.hidden=[64,", "override 'model.hidden=[64,': the value is not valid TOML"),
        ("strategy.name=PLUGIN_DIR/syntax_error.py:X", "syntax_error.py' has a syntax error at syntax_error.py:2"),
        ("strategy.name=PLUGIN_DIR/import_error.py:X", "failed to import at import_error.py:1: ZeroDivisionError"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(override, fragment, tmp_path):
    (tmp_path / "syntax_error.py").write_text("from fedsim.strategy import Strategy\nclass X(Strategy:\n    pass\n")
    (tmp_path / "import_error.py").write_text("x = 1 / 0\n")
    override = override.replace("PLUGIN_DIR", str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", str(QUICKSTART), "--set", override, "--out", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "COLUMNS": "400"},
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert fragment in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_a_model_that_does_not_vectorize_on_the_vectorized_backend_is_one_line_and_exit_2(tmp_path):
    overrides = ["model.name=lstm", "model.hidden=256", "engine.backend=vectorized"]
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", str(QUICKSTART), *(f"--set={o}" for o in overrides),
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "COLUMNS": "400"},
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr and proc.stdout == "", proc.stderr
    assert lines[0] == (
        "error: model 'lstm' does not run under torch.func.vmap, which the vectorized backend needs; "
        "set engine.backend=serial (or ray)"
    )


def test_missing_config_file_is_exit_2(tmp_path):
    result = runner.invoke(app, ["run", str(tmp_path / "missing.toml")])
    assert result.exit_code == 2
