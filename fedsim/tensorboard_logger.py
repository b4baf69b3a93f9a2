"""Optional TensorBoard logging of the per-round metrics (`fedsim run --tensorboard`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from fedsim.engine import Callback, Simulation
from fedsim.errors import ConfigError

SCALARS = ("test_accuracy", "test_loss", "train_loss", "lr", "round_s")


class TensorBoardLogger(Callback):
    """Writes each evaluated round's metrics as scalars, with the round as the step."""

    def __init__(self, log_dir: str | Path) -> None:
        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError(
                "--tensorboard needs the tensorboard package: pip install 'fedsim[tensorboard]'"
            )
        self.log_dir = Path(log_dir)
        self.writer = None

    def on_run_start(self, sim: Simulation) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run drops the events a killed run logged after its checkpoint.
        self.writer = SummaryWriter(str(self.log_dir), purge_step=sim.round + 1 if sim.round else None)

    def on_round_end(self, sim: Simulation, record: dict[str, Any]) -> None:
        for name in SCALARS:
            self.writer.add_scalar(name, record[name], record["round"])
        self.writer.flush()

    def on_run_end(self, sim: Simulation, summary: dict[str, Any], error: BaseException | None) -> None:
        if self.writer is not None:
            self.writer.close()
