"""The core emits, the face renders: terminal output lives in fedsim/cli/ only, and it stays
clean in a pipe (no escape codes, no redrawn lines, one-line messages not wrapped at 80 columns)."""

import ast
import io
import os
import subprocess
import sys

from rich.console import Console

from fedsim.cli.display import SweepProgress
from tests.conftest import QUICKSTART, ROOT

FACE = ROOT / "fedsim" / "cli"
SMALL = ["--set", "train.rounds=2", "--set", "data.num_clients=5", "--set", "engine.device=cpu"]


def core_modules():
    return [p for p in (ROOT / "fedsim").rglob("*.py") if FACE not in p.parents]


def test_only_the_cli_imports_rich_or_typer_or_prints():
    offences = []
    for path in core_modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                names = ["print"]
            else:
                continue
            offences += [
                f"{path.relative_to(ROOT)}:{node.lineno} {name}"
                for name in names
                if name == "print" or name.split(".")[0] in ("rich", "typer")
            ]
    assert core_modules() and not offences, offences


def drive(display: SweepProgress) -> None:
    """Two cells run at once, one finishes, one fails."""
    with display:
        display.planned(total=3, skipped=1)
        display.cell_started("a")
        display.cell_started("b")
        display.cell_finished("a")
        display.cell_failed("b", "Traceback ...\nValueError: bug")


def test_sweep_progress_on_a_terminal_shows_nothing_running_once_done():
    stream = io.StringIO()
    display = SweepProgress(Console(file=stream, force_terminal=True, width=120))
    drive(display)
    task = display.progress.tasks[0]
    assert (task.completed, task.fields["failed"], task.fields["running"]) == (3, 1, "")
    last_frame = stream.getvalue().rsplit("\x1b[2K", 1)[-1]  # what the terminal shows when it ends
    assert "3/3" in last_frame and "running" not in last_frame


def test_sweep_progress_in_a_pipe_is_one_plain_line_per_event():
    stream = io.StringIO()
    drive(SweepProgress(Console(file=stream)))
    assert stream.getvalue().splitlines() == [
        "sweep: 3 cells, 1 already finished",
        "cell 2/3 finished: a",
        "cell 3/3 failed: b",
    ]


def piped(*args: str) -> subprocess.CompletedProcess:
    """The CLI with stdout and stderr to pipes, in an environment that forces no terminal features."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE")}
    return subprocess.run(
        [sys.executable, "-m", "fedsim.cli", *args], capture_output=True, text=True, cwd=ROOT, env=env
    )


def assert_clean(proc: subprocess.CompletedProcess) -> list[str]:
    """No escape codes in either stream, the run header on one line; stderr's lines."""
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" not in proc.stdout and "\x1b[" not in proc.stderr
    lines = proc.stderr.splitlines()
    header = [line for line in lines if line.startswith("digits: 5 clients")]
    assert len(header) == 1 and len(header[0]) > 80 and "backend serial on cpu, " in header[0], lines
    return lines


def test_a_piped_run_prints_plain_lines(tmp_path):
    lines = assert_clean(piped("run", str(QUICKSTART), *SMALL, "--out", str(tmp_path / "r")))
    assert [line.split("  acc")[0] for line in lines[1:]] == ["round 1/2", "round 2/2"]


def test_a_quiet_piped_run_prints_only_the_header(tmp_path):
    lines = assert_clean(piped("run", str(QUICKSTART), *SMALL, "--quiet", "--out", str(tmp_path / "r")))
    assert len(lines) == 1


def test_a_piped_sweep_prints_plain_lines(tmp_path):
    out = tmp_path / "s"
    proc = piped("sweep", str(QUICKSTART), *SMALL, "--seeds", "2", "--jobs", "2", "--out", str(out))
    assert proc.returncode == 0 and "\x1b[" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == "sweep: 2 cells, 0 already finished"
    assert sorted(line.split(":")[0] for line in lines[1:3]) == ["cell 1/2 finished", "cell 2/2 finished"]
    assert lines[3] == (
        f"2 cells: 0 already finished, 2 finished now, 0 failed; folder {out}; "
        f"table and plots: fedsim report {out}"
    )
