"""Meaning checks of a config, run before any work; each failure is one ConfigError line."""

from __future__ import annotations

import torch

from fedsim.backends import BACKENDS
from fedsim.config import Config
from fedsim.errors import ConfigError
from fedsim.models import MODELS


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
    _require(e.backend in BACKENDS, f"unknown backend '{e.backend}'; choose one of: {', '.join(BACKENDS)}")
    resolve_device(e.device)


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
