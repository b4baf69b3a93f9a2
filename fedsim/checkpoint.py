"""Checkpoints of a run, and resuming from them.

A checkpoint is a folder `RUN/checkpoints/round_NNNNNN/` with two plain files, loadable
without unpickling anything:

- `tensors.safetensors`: the global params (`params/<name>`), the strategy's server state
  (`server/<group>/<name>`) and the index of the client states (`clients/ids` and
  `clients/segments`: which segment file of `RUN/client_states/` holds each client's state);
- `state.json`: the round, the metrics history so far, the training wall time and the
  resolved config as TOML (a resume under a different config is refused).

The client states themselves stay in the run's client-state store (fedsim/client_state.py),
whose segment files are never changed once written: a checkpoint writes only the states changed
since the previous one, as one new segment, and references the older segments it still needs.

No random-generator state is saved because none exists to save: every draw (cohort
sampling, dropout, local work, batch order, model init) comes from a generator built from
(seed, purpose, round, client id) in fedsim.seeding, and nothing draws from the global
torch/numpy/random generators (tests/test_checkpoint.py pins this). Strategies keep all their
state in the server and client states saved here, so the round number restores every draw.

A checkpoint is written into a temporary folder and renamed into place, so a run killed at
any moment leaves either the previous checkpoint or the new one, never a torn one; the store keeps
every segment the newest checkpoint references until a newer one is in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

from fedsim.client_state import flatten, fsync_path, unflatten, write_durably
from fedsim.config import Config, config_from_dict
from fedsim.engine import Callback, Simulation, SimulationState
from fedsim.errors import ConfigError
from fedsim.plugins import resolved
from fedsim.results import RunFolder

CHECKPOINTS_DIR = "checkpoints"
TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"
STATES_DIR = "client_states"  # the run's client-state store, which checkpoints reference
_PREFIX = "round_"


class Checkpointer(Callback):
    """Writes a checkpoint into the run folder every `every` rounds, keeping only the newest."""

    def __init__(self, run_dir: str | Path, every: int) -> None:
        self.run_dir = Path(run_dir)
        self.every = every

    def on_round_done(self, sim: Simulation) -> None:
        if sim.round % self.every == 0:
            state = sim.snapshot()
            save_checkpoint(self.run_dir, state, sim.config)
            sim.client_states.checkpointed(state.client_states)


def save_checkpoint(run_dir: str | Path, state: SimulationState, config: Config) -> Path:
    """Atomically write `state` as the run's newest checkpoint and drop older ones."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{state.round:06d}"
    staging = root / f".{final.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    write_durably(staging / TENSORS_FILE, save(_flat_tensors(state)))
    meta = {
        "round": state.round,
        "wall_s": state.wall_s,
        "history": state.history,
        "config": resolved(config).to_toml(),
    }
    write_durably(staging / STATE_FILE, (json.dumps(meta, indent=1) + "\n").encode())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    fsync_path(root)
    for old in root.iterdir():
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    found = [p for p in root.glob(f"{_PREFIX}*") if p.is_dir() and p.name[len(_PREFIX) :].isdigit()]
    return max(found, key=lambda p: int(p.name[len(_PREFIX) :]), default=None)


def checkpoint_round(run_dir: str | Path) -> int | None:
    """The round of the run's newest checkpoint, or None."""
    folder = latest_checkpoint(run_dir)
    return None if folder is None else int(folder.name[len(_PREFIX) :])


def load_checkpoint(run_dir: str | Path, config: Config) -> SimulationState | None:
    """The run's newest checkpoint, or None if it has none; refuses one made under another config."""
    folder = latest_checkpoint(run_dir)
    if folder is None:
        return None
    meta = json.loads((folder / STATE_FILE).read_text())
    changed = config_differences(meta["config"], config)
    if changed:
        raise ConfigError(
            f"checkpoint {folder} was made with a different config ({', '.join(changed)} differ); "
            "resume with the run's own config.toml or start a new run"
        )
    flat = load((folder / TENSORS_FILE).read_bytes())
    if "clients/ids" not in flat:  # written before client states lived in the store's segments
        raise ConfigError(
            f"checkpoint {folder} was written by an older fedsim, whose client states this version cannot "
            "read; start a new run (fedsim run --force) or resume it with the fedsim that made it"
        )
    params, server = {}, {}
    for key, tensor in flat.items():
        kind, rest = key.split("/", 1)
        if kind == "params":
            params[rest] = tensor
        elif kind == "server":
            server[rest] = tensor
    index = dict(zip(flat["clients/ids"].tolist(), flat["clients/segments"].tolist()))
    return SimulationState(
        round=meta["round"],
        params=params,
        server_state=unflatten(server),
        client_states=index,
        history=meta["history"],
        wall_s=meta["wall_s"],
    )


def prepare_run(
    config: Config, run_dir: str | Path, callbacks: list[Callback] = (), resume: bool = False
) -> Simulation:
    """A Simulation that writes its run folder (and checkpoints, if the config asks for them);
    with `resume`, restored from the folder's newest checkpoint when there is one."""
    callbacks = [RunFolder(run_dir), *callbacks]
    if config.train.checkpoint_every > 0:
        callbacks.append(Checkpointer(run_dir, config.train.checkpoint_every))
    sim = Simulation(config, callbacks, state_dir=Path(run_dir) / STATES_DIR)
    state = load_checkpoint(run_dir, config) if resume else None
    if state is not None:
        sim.restore(state)
    return sim


def _flat_tensors(state: SimulationState) -> dict[str, torch.Tensor]:
    """One flat name -> tensor mapping; cloned, because safetensors refuses tensors that share memory."""
    flat = {f"params/{k}": v for k, v in state.params.items()}
    flat.update({f"server/{k}": v for k, v in flatten(state.server_state).items()})
    flat = {k: v.detach().cpu().contiguous().clone() for k, v in flat.items()}
    flat["clients/ids"] = torch.tensor(list(state.client_states), dtype=torch.int64)
    flat["clients/segments"] = torch.tensor(list(state.client_states.values()), dtype=torch.int64)
    return flat


def config_differences(saved_toml: str, config: Config) -> list[str]:
    """Dotted keys whose values differ between a saved config (TOML text) and `config`.

    Both are compared resolved, so a default written out on one side and left implicit on the
    other is no difference.
    """
    saved = resolved(config_from_dict(tomllib.loads(saved_toml)))
    return _changed_keys(tomllib.loads(saved.to_toml()), tomllib.loads(resolved(config).to_toml()))


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(prefix + key)
    return changed
