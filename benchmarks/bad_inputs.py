"""Every input mistake the CLI knows, run as a user would: exit code and the message it prints.

    python -m benchmarks.bad_inputs        # writes benchmarks/results/bad_inputs.md

Each case runs `fedsim` as a subprocess in a scratch folder and records the exit code, the
number of stderr lines, whether a traceback appeared and the message. The table is the
reference for what a mistake looks like; tests/test_cli.py and tests/test_run_folder.py
assert the same cases.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = str(ROOT / "experiments" / "quickstart.toml")

SYNTAX_ERROR = "from fedsim.strategy import Strategy\nclass X(Strategy:\n    pass\n"


def cases(scratch: Path) -> list[tuple[str, list[str]]]:
    """(what, fedsim arguments); files the cases need are made in `scratch`."""
    (scratch / "file").write_text("x\n")
    (scratch / "old_run").mkdir()
    (scratch / "old_run" / "config.toml").write_text("name = 'old'\n")
    (scratch / "notes").mkdir()
    (scratch / "notes" / "thesis.tex").write_text("years of work\n")
    (scratch / "syntax_error.py").write_text(SYNTAX_ERROR)
    (scratch / "import_error.py").write_text("x = 1 / 0\n")
    run = ["run", QUICKSTART]
    out = ["--out", str(scratch / "new")]
    return [
        ("unknown key", [*run, "--set", "data.alpah=0.1", *out]),
        ("value out of range", [*run, "--set", "data.alpha=0", *out]),
        ("fraction out of range", [*run, "--set", "train.fraction=2", *out]),
        ("wrong type", [*run, "--set", "train.rounds=abc", *out]),
        ("value not valid TOML", [*run, "--set", "model.hidden=[64,", *out]),
        ("override without =", [*run, "--set", "train.rounds", *out]),
        ("validation share out of range", [*run, "--set", "data.validation_fraction=1", *out]),
        ("client test share out of range", [*run, "--set", "data.client_test_fraction=-0.1", *out]),
        ("FedBN on a model without BatchNorm", [*run, "--set", "trainer.name=fedbn", *out]),
        ("BatchNorm with a trainer keeping no statistics", [*run, "--set", 'model={name="cnn", norm="batch"}', *out]),
        ("a one-client-at-a-time trainer on vectorized",
         [*run, "--set", "trainer.name=fedlabel", "--set", "engine.backend=vectorized", *out]),
        ("unknown dataset", [*run, "--set", "data.dataset=imagenet", *out]),
        ("unknown model", [*run, "--set", "model.name=vit", *out]),
        ("unknown strategy", [*run, "--set", "strategy.name=fedfoo", *out]),
        ("unknown partitioner", [*run, "--set", "data.partitioner=zipf", *out]),
        ("unknown backend", [*run, "--set", "engine.backend=spark", *out]),
        ("unknown strategy hyperparameter", [*run, "--set", "strategy.bogus=1", *out]),
        ("more clients than samples", [*run, "--set", "data.num_clients=100000", *out]),
        ("a generated population with a label-skew split", [*run, "--set", "data.dataset=synthetic", *out]),
        ("a client-state budget below one client's state",
         [*run, "--set", "strategy.name=scaffold", "--set", "engine.client_state_memory=1000", *out]),
        ("missing config file", ["run", str(scratch / "missing.toml"), *out]),
        ("plugin file with a SyntaxError", [*run, "--set", f"strategy.name={scratch / 'syntax_error.py'}:X", *out]),
        ("plugin file that raises on import", [*run, "--set", f"strategy.name={scratch / 'import_error.py'}:X", *out]),
        ("plugin file missing", [*run, "--set", f"strategy.name={scratch / 'nope.py'}:X", *out]),
        ("--out is an existing file", [*run, "--out", str(scratch / "file")]),
        ("--out is an existing run", [*run, "--out", str(scratch / "old_run")]),
        ("--out --force on a folder that is no run", [*run, "--out", str(scratch / "notes"), "--force"]),
        ("--out not writable", [*run, "--out", "/proc/fedsim"]),
        ("--resume of a folder that is no run", ["run", "--resume", str(scratch / "notes")]),
        ("--resume with --set", ["run", "--resume", str(scratch / "old_run"), "--set", "train.rounds=2"]),
        ("sweep: bad --grid", ["sweep", QUICKSTART, "--grid", "data.alpha", "--out", str(scratch / "sw")]),
        ("sweep: --seeds 0", ["sweep", QUICKSTART, "--seeds", "0", "--out", str(scratch / "sw")]),
        ("report of a folder with no runs", ["report", str(scratch / "notes")]),
        ("diverging run (lr 1e30)", [*run, "--set", "train.lr=1e30", "--set", "train.rounds=1", "-q",
                                     "--out", str(scratch / "diverged")]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bad_inputs.md")
    args = parser.parse_args()
    rows = ["| mistake | exit | stderr lines | traceback | message |", "|---|---:|---:|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for what, arguments in cases(scratch):
            proc = subprocess.run(
                [sys.executable, "-m", "fedsim.cli", *arguments], capture_output=True, text=True, cwd=scratch,
                env={**os.environ, "COLUMNS": "400"},
            )
            lines = proc.stderr.strip().splitlines()
            message = (lines[-1] if lines else "").replace(str(scratch), "TMP").replace("|", "\\|")
            row = f"| {what} | {proc.returncode} | {len(lines)} | {'yes' if 'Traceback' in proc.stderr else 'no'} | `{message}` |"
            rows.append(row)
            print(row, flush=True)
    text = "# Bad input: exit code and message\n\n`python -m benchmarks.bad_inputs` (paths shown as TMP).\n\n"
    text += "\n".join(rows) + "\n"
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
