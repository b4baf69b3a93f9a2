"""Experiment configuration: typed sections, TOML loading, dotted overrides, validation.

A config is validated whole before any work starts. Every user mistake becomes a
`ConfigError` with one line that names the key and, where it can, the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from fedsim.errors import ConfigError


@dataclass
class DataConfig:
    """Which dataset, and how it is split over clients."""

    dataset: str = "digits"
    path: str = ""  # local copy of a hub dataset (hf:<name>)
    num_clients: int = 20
    partitioner: str = "dirichlet"
    alpha: float = 0.5  # Dirichlet concentration (label skew, or size skew for "quantity")
    min_partition_size: int = 2
    classes_per_client: int = 2  # pathological
    shards_per_client: int = 2  # shard
    test_fraction: float = 0.2
    samples: int = 0  # total samples for generated datasets; 0 = the dataset's default
    synthetic_alpha: float = 1.0
    synthetic_beta: float = 1.0
    label_ratio: float = 1.0  # share of each client's samples that keep their label (stratified, seeded)


@dataclass
class ModelConfig:
    """Which network every client trains."""

    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [128])  # MLP hidden widths
    channels: list[int] = field(default_factory=lambda: [32, 64])  # CNN conv widths


@dataclass
class TrainConfig:
    """The federated schedule and the clients' local optimiser."""

    rounds: int = 30
    fraction: float = 1.0  # share of clients sampled per round
    local_epochs: int = 2
    local_steps: int = 0  # > 0: a fixed number of local steps instead of epochs
    batch_size: int = 32
    lr: float = 0.05
    lr_decay: float = 1.0  # lr of round r is lr * lr_decay**r
    weight_decay: float = 0.0
    momentum: float = 0.0  # local SGD momentum, reset every round
    clip_norm: float = 0.0  # > 0: clip each local step's direction to this norm
    dropout: float = 0.0  # share of sampled clients that never report in a round
    min_local_work: float = 1.0  # each client does a random share in [this, 1] of its local steps
    eval_every: int = 1
    eval_batch_size: int = 1024
    checkpoint_every: int = 0  # > 0: checkpoint every this many rounds (fedsim run --resume); 0 = off


@dataclass
class EngineConfig:
    """Where local training runs."""

    backend: str = "serial"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_clients_per_batch: int = 0  # vectorized: clients trained at once; 0 = as many as fit memory
    workers: int = 0  # ray: actors in the pool; 0 = as many as the CPUs/GPUs hold at the sizes below
    cpus_per_worker: float = 1.0  # ray: CPUs each actor reserves (and its torch threads)
    gpus_per_worker: float = 0.0  # ray: GPUs each actor reserves; fractions share a GPU (e.g. 0.25)
    ray_address: str = ""  # ray: join this cluster (host:port of `ray start --head`); "" = a local instance
    max_retries: int = 2  # ray: times per round a dead actor is replaced and its share retried
    worker_backend: str = "serial"  # ray: how each actor trains its share: serial | vectorized | auto
    track_memory: bool = False  # per-client peak activation bytes in metrics.csv (slows small models)


@dataclass
class Config:
    """A whole experiment. `strategy` holds `name` plus that strategy's hyperparameters."""

    name: str = "experiment"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: dict[str, Any] = field(default_factory=lambda: {"name": "fedavg"})
    trainer: dict[str, Any] = field(default_factory=lambda: {"name": "backprop"})
    engine: EngineConfig = field(default_factory=EngineConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


# --------------------------------------------------------------------------- parsing


def _closest(key: str, options: list[str], prefix: str) -> str:
    match = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    return f" (did you mean '{prefix}{match[0]}'?)" if match else ""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints widen to float. Raises ConfigError."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            value = [value]
        return [coerce(v, item_tp, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a table, got {value!r}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Any or (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    raise ConfigError(
        f"config key '{key}' must be {_type_name(tp)}, got {type(value).__name__} {value!r}"
    )


def build_section(cls: type, values: dict[str, Any], prefix: str) -> Any:
    """Instantiate the dataclass `cls` from a dict, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(
                f"unknown config key '{dotted}'{_closest(key, names, prefix)}; valid keys: "
                + ", ".join(prefix + n for n in names)
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' must be a table")
            kwargs[key] = build_section(tp, value, dotted + ".")
        else:
            kwargs[key] = coerce(value, tp, dotted)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `a.b.c=value`; the value is read as a TOML value, else taken as a bare string."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value, e.g. data.alpha=0.1")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_override(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{'.'.join(path)}': '{part}' is not a table")
        node = child
    node[path[-1]] = value


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file '{path}' is not valid TOML: {err}") from None


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a TOML file (or start from defaults), apply `key=value` overrides, build a Config.

    Only structure and types are checked here; `fedsim.validate.validate` checks meaning.
    """
    tree = read_toml(path) if path is not None else {}
    for text in overrides:
        apply_override(tree, *parse_override(text))
    return config_from_dict(tree)


NAMED_TABLES = {"strategy": "fedavg", "trainer": "backprop"}  # tables of a plugin's name + its hyperparameters


def config_from_dict(tree: dict[str, Any]) -> Config:
    tree = dict(tree)
    named = {}
    for key, default in NAMED_TABLES.items():
        table = tree.pop(key, {"name": default})
        if not isinstance(table, dict):
            raise ConfigError(f"config key '{key}' must be a table")
        table = {"name": default, **table}
        if not isinstance(table["name"], str):
            raise ConfigError(f"config key '{key}.name' must be a string")
        named[key] = table
    config = build_section(Config, tree, "")
    for key, table in named.items():
        setattr(config, key, table)
    return config
