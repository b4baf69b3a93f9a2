"""The run folder: resolved config, per-round metrics, partition statistics, summary, weights.

Everything is written in plain formats (TOML, CSV, JSON, safetensors) so a run can be read
back without fedsim and without unpickling anything.
"""

from __future__ import annotations

import csv
import json
import shutil
import traceback
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from torch import nn

from fedsim.data import partition_table
from fedsim.engine import Callback, Simulation
from fedsim.errors import ConfigError, FedsimError, PluginFailed
from fedsim.plugins import resolved

METRIC_COLUMNS = [
    "round", "test_accuracy", "test_loss", "train_loss", "num_clients", "lr", "round_s", "wall_s",
    "peak_activation_bytes", "model_state_bytes", "peak_cuda_bytes",  # max over the round's clients
]
WEIGHTS_FILE = "model.safetensors"
CLIENT_METRICS_FILE = "client_metrics.csv"  # per evaluated round and client (federated evaluation)
CLIENT_METRIC_COLUMNS = ["round", "client_id", "num_samples", "accuracy", "loss"]
PERSONAL_METRIC_COLUMNS = ["personal_accuracy", "personal_loss"]  # where clients have models of their own
ERROR_FILE = "error.txt"  # the traceback of a run that failed in a plugin's code or in fedsim's
RUN_MARKERS = ("config.toml", "summary.json", "metrics.csv")  # files only a run folder holds


def claim_run_folder(path: str | Path, overwrite: bool = False) -> Path:
    """Make `path` an empty, writable run folder before any work, or refuse in one line.

    An existing run folder is never overwritten silently: it is refused (continue it with
    `--resume`) unless `overwrite`, which clears everything the old run left. A non-empty
    folder that is not a run folder is refused even then, so a mistyped `--out` cannot delete
    unrelated files.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out '{path}' is an existing file, not a folder; choose another --out")
    if path.is_dir() and any(path.iterdir()):
        if not any((path / marker).exists() for marker in RUN_MARKERS):
            raise ConfigError(f"--out '{path}' is a non-empty folder that is not a run folder; choose another --out")
        if not overwrite:
            raise ConfigError(
                f"--out '{path}' already holds a run; continue it with `fedsim run --resume {path}`, "
                "or pass --force to overwrite it"
            )
        try:
            shutil.rmtree(path)
        except OSError as e:
            raise ConfigError(f"cannot clear run folder '{path}': {e.strerror or e}") from None
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write run folder '{path}': {e.strerror or e}") from None
    return path


class RunFolder(Callback):
    """Writes a run's files as it goes; metrics are flushed each round so a crash keeps them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.columns = METRIC_COLUMNS

    def on_run_start(self, sim: Simulation) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / ERROR_FILE).unlink(missing_ok=True)  # of an earlier attempt this run resumes
        (self.path / "config.toml").write_text(resolved(sim.config).to_toml())  # defaults written out
        table = partition_table(*sim.population.label_counts()[:2])
        table.to_csv(self.path / "partition.csv", index=False)
        self.columns = METRIC_COLUMNS + sim.diagnostic_columns  # e.g. pseudo-label diagnostics
        with open(self.path / "metrics.csv", "w", newline="") as f:  # a resumed run restarts from its history
            writer = csv.writer(f)
            writer.writerow(self.columns)
            writer.writerows([record[c] for c in self.columns] for record in sim.history.records)
        if sim.client_test_sets is not None:
            self._start_client_metrics(sim)

    def _start_client_metrics(self, sim: Simulation) -> None:
        """A new client_metrics.csv, or a resumed run's rows up to its checkpoint."""
        path, kept = self.path / CLIENT_METRICS_FILE, []
        if sim.round > 0 and path.is_file():
            with open(path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["round"]) <= sim.round]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, CLIENT_METRIC_COLUMNS + (PERSONAL_METRIC_COLUMNS if sim.personal else []))
            writer.writeheader()
            writer.writerows(kept)

    def on_round_end(self, sim: Simulation, record: dict[str, Any]) -> None:
        with open(self.path / "metrics.csv", "a", newline="") as f:
            csv.writer(f).writerow([record[c] for c in self.columns])
        scores = sim.client_scores
        if sim.client_test_sets is not None and scores is not None:
            columns = [[record["round"]] * len(scores.client_ids), scores.client_ids.tolist(),
                       scores.num_samples.tolist(), scores.accuracy.tolist(), scores.loss.tolist()]
            if sim.personal:
                columns += [sim.personal_scores.accuracy.tolist(), sim.personal_scores.loss.tolist()]
            with open(self.path / CLIENT_METRICS_FILE, "a", newline="") as f:
                csv.writer(f).writerows(zip(*columns))

    def on_run_end(self, sim: Simulation, summary: dict[str, Any], error: BaseException | None) -> None:
        if not self.path.exists():
            return
        details = error_details(error)
        if details:
            (self.path / ERROR_FILE).write_text(details)
        if error is None:
            # the ordinary network's weights: local learning's auxiliary nets are left out
            weights = sim.trainer.network_params(sim.params)
            d = sim.population
            save_weights(self.path / WEIGHTS_FILE, weights, sim.config.model.name, d.input_shape, d.num_classes, d.vocab_size)
        # last: a summary saying "finished" marks a complete run folder (fedsim sweep skips those)
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def error_details(error: BaseException | None) -> str:
    """The traceback worth keeping of a run's error: none for a user's mistake (one line says
    it all) or an interrupt, the plugin's for `PluginFailed`, the whole one for a fedsim bug."""
    if error is None or isinstance(error, KeyboardInterrupt):
        return ""
    if isinstance(error, PluginFailed):
        return error.details
    if isinstance(error, FedsimError):
        return ""
    return "".join(traceback.format_exception(error))


def save_weights(
    path: Path,
    params: dict[str, torch.Tensor],
    model_name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    vocab_size: int = 0,
) -> None:
    """The weights, with what rebuilding their network needs beside the config (`load_model`):
    the input shape, the number of classes and, for a dataset with one, the vocabulary size.

    Written as bytes through `open`, so the file gets the same permissions as the run's others.
    """
    metadata = {"model": model_name, "input_shape": json.dumps(list(input_shape)), "num_classes": str(num_classes)}
    if vocab_size:
        metadata["vocab_size"] = str(vocab_size)
    path.write_bytes(save({k: v.detach().cpu().contiguous() for k, v in params.items()}, metadata=metadata))


def load_weights(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The final global parameters of a run, as a state dict for `model.load_state_dict`."""
    return load_file(Path(run_dir) / WEIGHTS_FILE)


def load_model(run_dir: str | Path) -> nn.Module:
    """The network a finished run trained, with its final global weights, in eval mode.

    Built from the run's own `config.toml` (its `[model]` table, plugins included) for the
    input shape, number of classes and vocabulary size recorded with the weights; no dataset is
    loaded.
    """
    from fedsim.config import load_config
    from fedsim.models import build_model

    run_dir = Path(run_dir)
    if not (run_dir / WEIGHTS_FILE).is_file():
        raise ConfigError(f"'{run_dir}' has no {WEIGHTS_FILE}; only a finished run has final weights")
    config = load_config(run_dir / "config.toml")
    with safe_open(run_dir / WEIGHTS_FILE, "pt") as f:
        metadata = f.metadata() or {}
    if "input_shape" not in metadata:
        raise ConfigError(f"{run_dir / WEIGHTS_FILE} does not record its input shape; rerun with this fedsim")
    model = build_model(
        config.model,
        tuple(json.loads(metadata["input_shape"])),
        int(metadata["num_classes"]),
        config.seed,
        int(metadata.get("vocab_size", 0)),
    )
    missing, unexpected = model.load_state_dict(load_weights(run_dir), strict=False)
    params = dict(model.named_parameters())
    if unexpected or any(name in params for name in missing):
        raise ConfigError(f"{run_dir / WEIGHTS_FILE} does not fit the model its config.toml names")
    return model.eval()
