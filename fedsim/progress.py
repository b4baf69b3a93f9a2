"""Live progress display of a run: round, accuracy, loss, elapsed time and ETA."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fedsim.engine import Callback, Simulation


class ProgressDisplay(Callback):
    """A rich progress bar on stderr, updated after every evaluated round."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None

    def on_run_start(self, sim: Simulation) -> None:
        self.progress = Progress(
            TextColumn("round"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("acc {task.fields[acc]}  loss {task.fields[loss]}"),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=sim.config.train.rounds, completed=sim.round, acc="-", loss="-"
        )

    def on_round_end(self, sim: Simulation, record: dict[str, Any]) -> None:
        self.progress.update(
            self.task,
            completed=record["round"],
            acc=f"{record['test_accuracy']:.4f}",
            loss=f"{record['test_loss']:.4f}",
        )

    def on_run_end(self, sim: Simulation, summary: dict[str, Any], error: BaseException | None) -> None:
        if self.progress is not None:
            self.progress.stop()
