"""Checks of a whole config that the schema cannot make: rules spanning several fields or
sections, and what the machine must provide (device, Ray). Each failure is one ConfigError line.

Types, ranges and choices of single fields are declared once, in the schema (fedsim.config's
`option`, plugins' own fields), and enforced when a config is built; `validate` enforces them
again for a config built or changed in Python, and resolves every plugin it names.
"""

from __future__ import annotations

import importlib.util

import torch

from fedsim.cohort import cohort_size, reporting_size
from fedsim.config import Config, config_from_dict
from fedsim.data.partition import require_client_count
from fedsim.errors import ConfigError
from fedsim.plugins import build_strategy, build_trainer, make, plugin_class, resolved
from fedsim.trainer import has_personal_models


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(config: Config) -> None:
    """Check everything that does not need the dataset loaded."""
    config_from_dict(config.to_dict())  # the schema, for a config changed since it was loaded
    resolved(config)  # builds the strategy, trainer and model: their names and hyperparameters
    make("dataset", config.data.dataset)
    t = config.train
    _require(t.local_epochs >= 1 or t.local_steps >= 1, "set train.local_epochs >= 1 or train.local_steps >= 1")
    for key in ("clients", "finetune_steps"):
        _require(
            getattr(config.eval, key) == 0 or config.data.client_test_fraction > 0,
            f"eval.{key} evaluates clients on their local test data: set data.client_test_fraction > 0",
        )
    validate_ray(config)
    resolve_device(config.engine.device)
    validate_trainer(config)
    validate_model(config)
    a = config.attack
    _require(a.name == "none" or a.fraction > 0, f"attack.name='{a.name}' needs attack.fraction > 0 (the share of attackers)")
    _require(a.name != "none" or a.fraction == 0, "attack.fraction > 0 needs an attack.name (sign_flip, gaussian, label_flip, scaled)")
    require_client_count(make("partitioner", config.data.partitioner), config.data.num_clients)
    if config.data.num_clients > 0:  # else checked once the natural split has counted its clients
        validate_cohort(config)


def validate_cohort(config: Config) -> None:
    """Whether every round's uploads are enough for the strategy's rule (Krum's n > 2f + 2)."""
    t = config.train
    reporting = reporting_size(cohort_size(config.data.num_clients, t.fraction, t.clients_per_round), t.dropout)
    build_strategy(config.strategy).validate_uploads(reporting)


def validate_ray(config: Config) -> None:
    """The Ray pool's settings; whether the machine or cluster has the resources is checked at start-up."""
    e = config.engine
    _require(
        e.gpus_per_worker <= 1 or float(e.gpus_per_worker).is_integer(),
        f"engine.gpus_per_worker must be a fraction in [0, 1] or a whole number, got {e.gpus_per_worker}",
    )
    if e.backend != "ray":
        return
    _require(importlib.util.find_spec("ray"), "engine.backend=ray needs Ray: pip install 'fedsim[ray]'")
    on_gpu = resolve_device(e.device).type == "cuda"
    _require(
        not on_gpu or e.gpus_per_worker > 0,
        "engine.backend=ray on a GPU needs engine.gpus_per_worker > 0 (0.25 puts four workers on each GPU)",
    )
    _require(
        on_gpu or e.gpus_per_worker == 0,
        f"engine.gpus_per_worker={e.gpus_per_worker:g} needs engine.device=cuda (or auto on a GPU machine)",
    )


def validate_trainer(config: Config) -> None:
    """The `[trainer]` table's values; backends that train vmapped chunks need a trainer that vectorizes."""
    trainer = build_trainer(config.trainer)
    _require(
        not (has_personal_models(trainer) and config.eval.finetune_steps > 0),
        f"eval.finetune_steps fine-tunes the global model, but trainer '{trainer.name}' keeps personal "
        "models of its own: set eval.finetune_steps=0",
    )
    if not trainer.vectorizes:
        refusal = f"trainer '{trainer.name}' trains one client at a time, which the vectorized backend cannot run"
        refuse_vectorized(config, refusal)


def validate_model(config: Config) -> None:
    """Backends that train vmapped chunks need a model that runs under vmap (`Model.vectorizes`)."""
    name = config.model["name"]
    if not plugin_class("model", name).vectorizes:
        refusal = f"model '{name}' does not run under torch.func.vmap, which the vectorized backend needs"
        refuse_vectorized(config, refusal)


def refuse_vectorized(config: Config, refusal: str) -> None:
    """Refuse, for `refusal`, the backends that train vmapped chunks: the vectorized backend and
    Ray workers training vectorized."""
    e = config.engine
    _require(e.backend != "vectorized", f"{refusal}; set engine.backend=serial (or ray)")
    _require(e.backend != "ray" or e.worker_backend != "vectorized", f"{refusal}; set engine.worker_backend=serial")


def resolve_device(name: str) -> torch.device:
    """'auto' -> the first GPU when there is one, else the CPU; reject unusable devices."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"engine.device '{name}' is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("engine.device asks for CUDA but no GPU is available; use engine.device=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"engine.device '{name}': only {torch.cuda.device_count()} GPU(s) present")
    elif device.type != "cpu":
        raise ConfigError(f"engine.device '{name}' is not supported; use auto, cpu, cuda or cuda:N")
    return device
