"""The `fedsim` command line: run and resume experiments, sweep grids, report, list what exists.

A mistake in the input is one line on stderr and a non-zero exit code, never a traceback.
Everything the terminal shows is drawn here (`display.py`: progress); the engine and sweeps
only emit events and return results.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from fedsim.cli.console import err, out, say
from fedsim.errors import FedsimError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="fedsim: simulate federated learning on non-IID data.",
)


def fail(message: str, code: int) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def default_out_dir(name: str) -> Path:
    return Path("runs") / f"{name}_{time.strftime('%Y%m%d-%H%M%S')}"


@app.command()
def run(
    config: Optional[Path] = typer.Argument(
        None, help="Experiment TOML file, e.g. experiments/quickstart.toml (omit with --resume)."
    ),
    set_: list[str] = typer.Option(
        [], "--set", "-s", help="Override a config value: --set data.alpha=0.1 (repeatable)."
    ),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/NAME_TIME)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="Continue this run folder from its newest checkpoint (train.checkpoint_every)."
    ),
    tensorboard: bool = typer.Option(
        False, "--tensorboard", help="Also log per-round metrics to RUN/tensorboard."
    ),
    force: bool = typer.Option(
        False, "--force", help="Overwrite the run folder --out names if it holds a run (everything in it is deleted)."
    ),
) -> None:
    """Run one experiment and write its run folder (config, metrics, partition, summary, weights)."""
    try:
        _run(config, set_, out_dir, quiet, resume, tensorboard, force)
    except FedsimError as e:
        fail(str(e), e.exit_code)
    except KeyboardInterrupt:  # before the run started: nothing to resume
        fail("interrupted", 130)


def _run(
    config_path: Optional[Path],
    overrides: list[str],
    out_dir: Optional[Path],
    quiet: bool,
    resume: Optional[Path],
    tensorboard: bool,
    force: bool,
) -> None:
    from fedsim.config import load_config  # light: a config error shows before torch is imported
    from fedsim.errors import ConfigError, PluginFailed
    from fedsim.plugins import check_names  # light too: entry-point metadata only

    if resume is not None:
        if config_path is not None or overrides or out_dir is not None or force:
            raise ConfigError(
                "--resume RUN_DIR continues a run with its own config; drop CONFIG, --set, --out and --force"
            )
        if not (resume / "config.toml").is_file():
            raise ConfigError(f"'{resume}' is not a run folder (no config.toml)")
        summary_file = resume / "summary.json"
        if summary_file.is_file() and json.loads(summary_file.read_text()).get("status") == "finished":
            say(out, f"{resume} already finished; nothing to resume")
            return
        config, path = load_config(resume / "config.toml"), resume
    elif config_path is None:
        raise ConfigError("give an experiment CONFIG file, or --resume RUN_DIR")
    else:
        config = load_config(config_path, overrides)
        path = out_dir or default_out_dir(config.name)
    check_names(config)
    from fedsim.checkpoint import checkpoint_round, prepare_run
    from fedsim.cli.display import RunHeader, RunProgress
    from fedsim.results import claim_run_folder

    if resume is None:
        claim_run_folder(path, overwrite=force)
    callbacks = [RunHeader(err, resumed=resume is not None)] + ([] if quiet else [RunProgress(err)])
    if tensorboard:
        from fedsim.tensorboard_logger import TensorBoardLogger

        callbacks.append(TensorBoardLogger(path / "tensorboard"))
    sim = prepare_run(config, path, callbacks, resume=resume is not None)
    try:
        summary = sim.run()
    except KeyboardInterrupt:
        saved = checkpoint_round(path)
        since = (
            f"from its checkpoint of round {saved}" if saved
            else "from round 1 (it has no checkpoint: set train.checkpoint_every to keep progress)"
        )
        fail(f"interrupted after round {sim.round}; `fedsim run --resume {path}` continues it {since}", 130)
    except PluginFailed as e:
        fail(f"{e}; traceback in {path / 'error.txt'}", e.exit_code)
    table = Table(title=f"{config.name}: {summary['rounds']} rounds in {summary['wall_s']:.1f} s")
    for column in ("final accuracy", "best accuracy", "run folder"):
        table.add_column(column)
    table.add_row(f"{summary['final_accuracy']:.4f}", f"{summary['best_accuracy']:.4f}", str(path))
    out.print(table)


@app.command()
def sweep(
    config: Path = typer.Argument(..., help="Experiment TOML file every cell starts from."),
    grid: list[str] = typer.Option(
        [], "--grid", "-g", help="A grid axis: key=v1,v2,... with values read like --set (repeatable)."
    ),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Run seeds 0..N-1 in every grid cell."),
    seed_list: Optional[str] = typer.Option(None, "--seed-list", help="Run these seeds, e.g. 0,1,7."),
    set_: list[str] = typer.Option(
        [], "--set", "-s", help="Override a config value in every cell (repeatable)."
    ),
    out_dir: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Sweep folder (default sweeps/NAME); rerun the same command to resume."
    ),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Cells run at once (default: CPU cores)."),
) -> None:
    """Run a config over a cartesian grid of values and seeds, one run folder per cell; resumable."""
    try:
        _sweep(config, grid, seeds, seed_list, set_, out_dir, jobs)
    except FedsimError as e:
        fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        fail("interrupted; rerun the same command to resume the sweep", 130)


def _sweep(
    config_path: Path,
    grid: list[str],
    seeds: Optional[int],
    seed_list: Optional[str],
    overrides: list[str],
    out_dir: Optional[Path],
    jobs: Optional[int],
) -> None:
    from fedsim.config import load_config  # light: a config error shows before torch is imported
    from fedsim.errors import ConfigError
    from fedsim.plugins import check_names  # light too: entry-point metadata only

    base = load_config(config_path, overrides)
    check_names(base)
    if seeds is not None and seed_list is not None:
        raise ConfigError("give --seeds N or --seed-list, not both")
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if seed_list is not None:
        try:
            seed_values = [int(s) for s in seed_list.split(",")]
        except ValueError:
            raise ConfigError(f"--seed-list '{seed_list}' must be integers separated by commas") from None
    else:
        seed_values = list(range(seeds)) if seeds is not None else [base.seed]
    out_path = out_dir or Path("sweeps") / base.name
    from fedsim.cli.display import SweepProgress
    from fedsim.sweep import available_cores, run_sweep

    jobs = jobs if jobs is not None else available_cores()
    with SweepProgress(err) as progress:
        result = run_sweep(config_path, grid, seed_values, overrides, out_path, jobs, progress)
    say(
        err,
        f"{result.total} cells: {result.skipped} already finished, {result.finished} finished now, "
        f"{len(result.failed)} failed; folder {out_path}; table and plots: fedsim report {out_path}",
    )
    if result.failed:
        fail(f"{len(result.failed)} cell(s) failed, e.g. {result.failed[0]} (see its error.txt)", 1)


@app.command()
def report(
    folder: Path = typer.Argument(..., help="A sweep folder (with sweep.json) or a single run folder."),
    target: float = typer.Option(0.8, "--target", help="Accuracy for the 'rounds to target' column."),
) -> None:
    """Tabulate a sweep (mean ± std over seeds) and plot it; writes report.md, report.csv and PNGs."""
    try:
        from fedsim.report import make_report

        result = make_report(folder, target)
    except FedsimError as e:
        fail(str(e), e.exit_code)
    say(out, result.markdown)
    say(err, "wrote " + ", ".join(str(p) for p in result.files))


@app.command("list")
def list_() -> None:
    """List strategies, trainers, models, datasets, partitioners and backends, plugins included."""
    from rich.markup import escape

    from fedsim.plugins import catalogue

    for title, rows in catalogue().items():
        table = Table(title=title, title_justify="left", show_header=False)
        for column, style in (("name", "bold"), ("description", None), ("from", "dim")):
            table.add_column(column, style=style)
        for row in rows:
            table.add_row(row.name, escape(row.description), row.source)
        out.print(table)


def main() -> None:
    try:
        app()
    except FedsimError as e:  # raised outside a command body
        say(err, f"error: {e}")
        sys.exit(e.exit_code)
