"""Start-up imports only what a command uses: help, `fedsim list` and a config error never import
torch or the heavy stacks, and a serial quickstart run (even with a `file.py:Class` plugin)
imports torch and datasets but not Ray, Flower, flwr-datasets, matplotlib or TensorBoard.
No timings here: benchmarks/startup.py measures them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import QUICKSTART, ROOT

HEAVY = ("datasets", "flwr", "flwr_datasets", "matplotlib", "ray", "tensorboard", "torch")
PROBE = f"""
import json, sys
args = json.loads(sys.argv[1])
import fedsim.cli
code = 0
if args is not None:
    sys.argv = ["fedsim", *args]
    try:
        fedsim.cli.main()
    except SystemExit as exit:
        code = exit.code
print(json.dumps({{"exit": code, "imported": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
"""


def imported_by(args: list[str] | None) -> tuple[int, list[str]]:
    """(exit code, heavy packages imported) of `fedsim ARGS` run in a fresh interpreter; None: only
    `import fedsim.cli`."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True, cwd=ROOT, check=True
    )
    result = json.loads(proc.stdout.splitlines()[-1])
    return result["exit"], result["imported"]


@pytest.mark.parametrize(
    "args, code",
    [
        (None, 0),
        (["--help"], 0),
        (["run", "--help"], 0),
        (["report", "--help"], 0),
        (["list"], 0),
        (["run", str(QUICKSTART), "--set", "data.alpah=1"], 2),
        (["run", str(QUICKSTART), "--set", "train.rounds=abc"], 2),
        (["sweep", str(QUICKSTART), "--seeds", "0"], 2),
        (["run", str(QUICKSTART), "--set", "strategy.name=fedfoo"], 2),
        (["sweep", str(QUICKSTART), "--set", "data.partitioner=zipf"], 2),
    ],
    ids=["import", "help", "run-help", "report-help", "list", "unknown-key", "bad-type", "bad-seeds",
         "unknown-strategy", "unknown-partitioner"],
)
def test_help_list_and_config_errors_import_no_heavy_package(args, code):
    assert imported_by(args) == (code, [])


def test_a_serial_run_with_a_file_plugin_imports_torch_and_datasets_only(tmp_path):
    plugin = ROOT / "examples" / "trimmed_mean" / "trimmed_mean.py"
    sets = ["train.rounds=1", "data.num_clients=5", "engine.device=cpu", f"strategy.name={plugin}:TrimmedMean"]
    args = ["run", str(QUICKSTART), "--quiet", "--out", str(tmp_path / "run"), *(f"--set={s}" for s in sets)]
    assert imported_by(args) == (0, ["datasets", "torch"])
