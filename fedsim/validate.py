"""Meaning checks of a config, run before any work; each failure is one ConfigError line."""

from __future__ import annotations

import importlib.util

import torch

from fedsim.backends import BACKENDS, WORKER_BACKENDS
from fedsim.config import Config
from fedsim.errors import ConfigError
from fedsim.models import MODELS
from fedsim.plugins import build_trainer


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(config: Config) -> None:
    """Check value ranges and names that do not need the dataset loaded."""
    d, t, e = config.data, config.train, config.engine
    _require(d.num_clients >= 1, f"data.num_clients must be >= 1, got {d.num_clients}")
    _require(d.alpha > 0, f"data.alpha must be > 0, got {d.alpha}")
    _require(d.min_partition_size >= 0, "data.min_partition_size must be >= 0")
    _require(0 < d.test_fraction < 1, f"data.test_fraction must be in (0, 1), got {d.test_fraction}")
    _require(d.samples >= 0, "data.samples must be >= 0")
    _require(0 < d.label_ratio <= 1, f"data.label_ratio must be in (0, 1], got {d.label_ratio}")
    _require(config.model.name in MODELS, f"unknown model '{config.model.name}'; choose one of: {', '.join(MODELS)}")
    _require(all(h > 0 for h in config.model.hidden), "model.hidden widths must be > 0")
    _require(all(c > 0 for c in config.model.channels), "model.channels widths must be > 0")
    _require(t.rounds >= 1, f"train.rounds must be >= 1, got {t.rounds}")
    _require(0 < t.fraction <= 1, f"train.fraction must be in (0, 1], got {t.fraction}")
    _require(t.local_epochs >= 1 or t.local_steps >= 1, "set train.local_epochs >= 1 or train.local_steps >= 1")
    _require(t.local_epochs >= 0 and t.local_steps >= 0, "train.local_epochs and train.local_steps must be >= 0")
    _require(t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}")
    _require(t.lr > 0, f"train.lr must be > 0, got {t.lr}")
    _require(0 < t.lr_decay <= 1, f"train.lr_decay must be in (0, 1], got {t.lr_decay}")
    _require(t.weight_decay >= 0, "train.weight_decay must be >= 0")
    _require(0 <= t.momentum < 1, "train.momentum must be in [0, 1)")
    _require(t.clip_norm >= 0, "train.clip_norm must be >= 0")
    _require(0 <= t.dropout < 1, f"train.dropout must be in [0, 1), got {t.dropout}")
    _require(0 < t.min_local_work <= 1, f"train.min_local_work must be in (0, 1], got {t.min_local_work}")
    _require(t.eval_every >= 1, "train.eval_every must be >= 1")
    _require(t.eval_batch_size >= 1, "train.eval_batch_size must be >= 1")
    _require(t.checkpoint_every >= 0, f"train.checkpoint_every must be >= 0, got {t.checkpoint_every}")
    _require(e.backend in BACKENDS, f"unknown backend '{e.backend}'; choose one of: {', '.join(BACKENDS)}")
    _require(
        e.max_clients_per_batch >= 0,
        f"engine.max_clients_per_batch must be >= 0 (0 = automatic), got {e.max_clients_per_batch}",
    )
    validate_ray(config)
    resolve_device(e.device)
    validate_trainer(config)


def validate_ray(config: Config) -> None:
    """The Ray pool's settings; whether the machine or cluster has the resources is checked at start-up."""
    e = config.engine
    _require(e.workers >= 0, f"engine.workers must be >= 0 (0 = as many as resources hold), got {e.workers}")
    _require(e.cpus_per_worker > 0, f"engine.cpus_per_worker must be > 0, got {e.cpus_per_worker}")
    _require(
        e.gpus_per_worker >= 0 and (e.gpus_per_worker <= 1 or float(e.gpus_per_worker).is_integer()),
        f"engine.gpus_per_worker must be a fraction in [0, 1] or a whole number, got {e.gpus_per_worker}",
    )
    _require(e.max_retries >= 0, f"engine.max_retries must be >= 0, got {e.max_retries}")
    _require(
        e.worker_backend in WORKER_BACKENDS,
        f"engine.worker_backend must be one of {', '.join(WORKER_BACKENDS)}, got '{e.worker_backend}'",
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
    if trainer.vectorizes:
        return
    e, name = config.engine, trainer.name
    refusal = f"trainer '{name}' trains one client at a time, which the vectorized backend cannot run"
    _require(e.backend != "vectorized", f"{refusal}; set engine.backend=serial")
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
