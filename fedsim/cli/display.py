"""Progress of runs and sweeps on the terminal, drawn from the events the engine and sweeps emit.

On a terminal progress is a live bar; when the stream is a pipe or a file (a log, CI) every
event is one plain line instead, so a log holds no escape codes and no redrawn lines.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column

from fedsim.cli.console import say
from fedsim.engine import Callback, Simulation
from fedsim.sweep import SweepListener


class RunHeader(Callback):
    """One line when the run starts: the federation, the strategy and the backend it runs on
    (the one `engine.backend = "auto"` chose)."""

    def __init__(self, console: Console, resumed: bool = False) -> None:
        self.console = console
        self.resumed = resumed

    def on_run_start(self, sim: Simulation) -> None:
        if self.resumed:
            start = f"after round {sim.round}" if sim.round else "from round 1 (no checkpoint yet)"
            say(self.console, f"resuming {sim.config.name} {start}")
        c, h = sim.config, sim.heterogeneity()
        say(
            self.console,
            f"{c.data.dataset}: {c.data.num_clients} clients, {c.data.partitioner} "
            f"(alpha={c.data.alpha}), sizes {h['min_size']:.0f}..{h['max_size']:.0f}, "
            f"label TV {h['label_tv']:.3f}, repair moved {h['moved']:.0f}; strategy {c.strategy['name']}, "
            f"backend {sim.backend.name} on {sim.device}, {sim.threads} thread(s)",
        )

    def on_warning(self, sim: Simulation, message: str) -> None:
        say(self.console, f"warning: {message}")


class RunProgress(Callback):
    """A run's round, test accuracy and loss, elapsed time and ETA, updated after every evaluated round."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.task = None
        self.rounds = 0

    def on_run_start(self, sim: Simulation) -> None:
        self.rounds = sim.config.train.rounds
        if not self.console.is_terminal:
            return
        self.progress = Progress(
            TextColumn("round"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("acc {task.fields[acc]}  loss {task.fields[loss]}{task.fields[flag]}"),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=self.rounds, completed=sim.round, acc="-", loss="-", flag="")

    def on_round_end(self, sim: Simulation, record: dict[str, Any]) -> None:
        acc, loss = f"{record['test_accuracy']:.4f}", f"{record['test_loss']:.4f}"
        flag = "  (diverging)" if sim.warnings else ""
        if self.progress is None:
            say(
                self.console,
                f"round {record['round']}/{self.rounds}  acc {acc}  loss {loss}{flag}  "
                f"elapsed {record['wall_s']:.1f} s",
            )
        else:
            self.progress.update(self.task, completed=record["round"], acc=acc, loss=loss, flag=flag)

    def on_run_end(self, sim: Simulation, summary: dict[str, Any], error: BaseException | None) -> None:
        if self.progress is not None:
            self.progress.stop()


class SweepProgress(SweepListener):
    """A sweep's cells done of all, failures, elapsed time, ETA and the cells running now.

    Use it as a context manager around `run_sweep`, so the live bar stops however the sweep ends.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.task = None
        self.total = self.done = self.failed = 0
        self.running: list[str] = []

    def __enter__(self) -> SweepProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def planned(self, total: int, skipped: int) -> None:
        self.total, self.done = total, skipped
        if not self.console.is_terminal:
            say(self.console, f"sweep: {total} cells, {skipped} already finished")
            return
        self.progress = Progress(
            TextColumn("cells"),
            MofNCompleteColumn(),
            BarColumn(bar_width=24),
            TextColumn("failed {task.fields[failed]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[running]}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
            console=self.console,
            expand=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("sweep", total=total, completed=skipped, failed=0, running="")

    def cell_started(self, name: str) -> None:
        self.running.append(name)
        self._update()

    def cell_finished(self, name: str) -> None:
        self._end(name, "finished")

    def cell_failed(self, name: str, error: str) -> None:
        self.failed += 1
        self._end(name, "failed")

    def _end(self, name: str, outcome: str) -> None:
        self.running.remove(name)
        self.done += 1
        if self.progress is None:
            say(self.console, f"cell {self.done}/{self.total} {outcome}: {name}")
        self._update()

    def _update(self) -> None:
        if self.progress is not None:
            running = "running: " + ", ".join(self.running) if self.running else ""
            self.progress.update(self.task, completed=self.done, failed=self.failed, running=running)
