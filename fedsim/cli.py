"""The `fedsim` command line: run experiments and list what exists.

A mistake in the input is one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from fedsim.errors import FedsimError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="fedsim: simulate federated learning on non-IID data.",
)
out = Console()
err = Console(stderr=True)


def fail(message: str, code: int) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def default_out_dir(name: str) -> Path:
    return Path("runs") / f"{name}_{time.strftime('%Y%m%d-%H%M%S')}"


@app.command()
def run(
    config: Path = typer.Argument(..., help="Experiment TOML file, e.g. experiments/quickstart.toml."),
    set_: list[str] = typer.Option(
        [], "--set", "-s", help="Override a config value: --set data.alpha=0.1 (repeatable)."
    ),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default runs/NAME_TIME)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Run one experiment and write its run folder (config, metrics, partition, summary, weights)."""
    try:
        _run(config, set_, out_dir, quiet)
    except FedsimError as e:
        fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        fail("interrupted; metrics of finished rounds are in the run folder", 130)


def _run(config_path: Path, overrides: list[str], out_dir: Optional[Path], quiet: bool) -> None:
    from fedsim.config import load_config
    from fedsim.engine import Simulation
    from fedsim.progress import ProgressDisplay
    from fedsim.results import RunFolder

    config = load_config(config_path, overrides)
    folder = RunFolder(out_dir or default_out_dir(config.name))
    callbacks = [folder] if quiet else [folder, ProgressDisplay(err)]
    sim = Simulation(config, callbacks)
    h = sim.heterogeneity()
    err.print(
        f"{config.data.dataset}: {config.data.num_clients} clients, {config.data.partitioner} "
        f"(alpha={config.data.alpha}), sizes {h['min_size']:.0f}..{h['max_size']:.0f}, "
        f"label TV {h['label_tv']:.3f}, repair moved {h['moved']:.0f}; strategy {config.strategy['name']}, "
        f"backend {config.engine.backend} on {sim.device}",
        highlight=False,
    )
    summary = sim.run()
    table = Table(title=f"{config.name}: {summary['rounds']} rounds in {summary['wall_s']:.1f} s")
    for column in ("final accuracy", "best accuracy", "run folder"):
        table.add_column(column)
    table.add_row(f"{summary['final_accuracy']:.4f}", f"{summary['best_accuracy']:.4f}", str(folder.path))
    out.print(table)


@app.command("list")
def list_() -> None:
    """List datasets, partitioners, models, strategies and backends."""
    from fedsim.backends import BACKENDS
    from fedsim.data import DATASETS, PARTITIONERS
    from fedsim.models import MODELS
    from fedsim.plugins import available_strategies

    for title, entries in [
        ("datasets (data.dataset)", DATASETS),
        ("partitioners (data.partitioner)", PARTITIONERS),
        ("models (model.name)", MODELS),
        ("strategies (strategy.name)", available_strategies()),
        ("backends (engine.backend)", BACKENDS),
    ]:
        table = Table(title=title, title_justify="left", show_header=False)
        table.add_column("name", style="bold")
        table.add_column("description")
        for name, text in entries.items():
            table.add_row(name, text)
        out.print(table)


def main() -> None:
    try:
        app()
    except FedsimError as e:  # raised outside a command body
        err.print(f"error: {e}", highlight=False)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
