"""The run folder: resolved config, per-round metrics, partition statistics, summary, weights.

Everything is written in plain formats (TOML, CSV, JSON, safetensors) so a run can be read
back without fedsim and without unpickling anything.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedsim.data import partition_table
from fedsim.engine import Callback, Simulation
from fedsim.plugins import resolved

METRIC_COLUMNS = [
    "round", "test_accuracy", "test_loss", "train_loss", "num_clients", "lr", "round_s", "wall_s",
    "peak_activation_bytes", "model_state_bytes", "peak_cuda_bytes",  # max over the round's clients
]
WEIGHTS_FILE = "model.safetensors"


class RunFolder(Callback):
    """Writes a run's files as it goes; metrics are flushed each round so a crash keeps them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.columns = METRIC_COLUMNS

    def on_run_start(self, sim: Simulation) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.toml").write_text(resolved(sim.config).to_toml())  # defaults written out
        table = partition_table(sim.partition, sim.train_labels, sim.dataset.num_classes)
        table.to_csv(self.path / "partition.csv", index=False)
        self.columns = METRIC_COLUMNS + sim.diagnostic_columns  # e.g. pseudo-label diagnostics
        with open(self.path / "metrics.csv", "w", newline="") as f:  # a resumed run restarts from its history
            writer = csv.writer(f)
            writer.writerow(self.columns)
            writer.writerows([record[c] for c in self.columns] for record in sim.history.records)

    def on_round_end(self, sim: Simulation, record: dict[str, Any]) -> None:
        with open(self.path / "metrics.csv", "a", newline="") as f:
            csv.writer(f).writerow([record[c] for c in self.columns])

    def on_run_end(self, sim: Simulation, summary: dict[str, Any], error: BaseException | None) -> None:
        if not self.path.exists():
            return
        if error is None:
            # the ordinary network's weights: local learning's auxiliary nets are left out
            weights = sim.trainer.network_params(sim.params)
            save_weights(self.path / WEIGHTS_FILE, weights, sim.config.model.name)
        # last: a summary saying "finished" marks a complete run folder (fedsim sweep skips those)
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def save_weights(path: Path, params: dict[str, torch.Tensor], model_name: str) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in params.items()}, path, metadata={"model": model_name})


def load_weights(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The final global parameters of a run, as a state dict for `model.load_state_dict`."""
    return load_file(Path(run_dir) / WEIGHTS_FILE)
