"""Experiment configuration: one schema, TOML loading, dotted overrides.

A config is validated whole before any work starts. Every user mistake becomes a
`ConfigError` with one line that names the key and, where it can, the fix.

The schema is the dataclasses below and the plugins' own dataclasses (a strategy's, trainer's
or model's fields are its hyperparameters). Each field declares its type by annotation and
its range or choices once, with `option`:

    lr: float = option(0.05, gt=0)
    weighting: str = option("samples", choices=("samples", "uniform"))
    hidden: list[int] = option([128], gt=0)        # a list: every item is checked

`build_section` enforces all of it when a section is built from a table: unknown keys (with
"did you mean"), wrong types, values out of range, values not among the choices (with "did
you mean"). A plugin's `validate()` is left for rules that span several of its fields, and
`fedsim.validate` for rules that span sections or need the machine (device, Ray, resources).

`[strategy]`, `[trainer]` and `[model]` are named tables (`NAMED_TABLES`): `name` picks the
plugin (fedsim.plugins resolves it), the other keys are its fields, and a sub-table per name
(`[strategy.fedavgm] momentum = 0.5`) applies only when that plugin is chosen.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from fedsim.errors import ConfigError


def option(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A dataclass field with its default and the range or choices `build_section` enforces."""
    checks = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}
    metadata = {"checks": {k: v for k, v in checks.items() if v is not None}}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DataConfig:
    """Which dataset, and how it is split over clients."""

    dataset: str = "digits"  # a registered dataset, hf:<hub name>, package.module:Class or file.py:Class
    path: str = ""  # local copy of a hub dataset (hf:<name>)
    num_clients: int = option(20, ge=0)  # 0 = one per natural client (partitioner "natural")
    partitioner: str = "dirichlet"  # a registered partitioner, package.module:Class or file.py:Class
    alpha: float = option(0.5, gt=0)  # Dirichlet concentration (label skew, or size skew for "quantity")
    min_partition_size: int = option(2, ge=0)
    classes_per_client: int = option(2, ge=1)  # pathological
    shards_per_client: int = option(2, ge=1)  # shard
    test_fraction: float = option(0.2, gt=0, lt=1)
    samples: int = option(0, ge=0)  # total samples for generated datasets; 0 = the dataset's default
    synthetic_alpha: float = option(1.0, ge=0)
    synthetic_beta: float = option(1.0, ge=0)
    # a generated population (synthetic): the central test set pools the test shares of this
    # many seeded clients (0 or more than N = every client's)
    test_clients: int = option(1000, ge=0)
    label_ratio: float = option(1.0, gt=0, le=1)  # share of each client's samples that keep their label
    # held out for evaluation, stratified and seeded: a validation share of the train pool (for
    # tuning; never the test set) and each client's local test share of its own partition
    validation_fraction: float = option(0.0, ge=0, lt=1)
    client_test_fraction: float = option(0.0, ge=0, lt=1)
    # natural clients (fedsim.data.natural): the column naming each sample's client ("" = the
    # dataset's own: writer, speaking role, user), and the seeded share of those clients kept
    partition_by: str = ""
    client_fraction: float = option(1.0, gt=0, le=1)
    # text datasets: words the vocabulary keeps (0 = every word of the training text), tokens per sample
    vocabulary: int = option(10000, ge=0)
    sequence_length: int = option(25, ge=1)


class PluginTable(dict):
    """A named table (`[strategy]`, `[trainer]`, `[model]`): `name` plus the plugin's fields.

    A plain dict, so it is written to TOML as one; `.name` reads `self["name"]`.
    """

    @property
    def name(self) -> str:
        return self["name"]


ModelConfig = PluginTable  # the type of `Config.model`, by the name its callers import


@dataclass
class TrainConfig:
    """The federated schedule and the clients' local optimiser."""

    rounds: int = option(30, ge=1)
    fraction: float = option(1.0, gt=0, le=1)  # share of clients sampled per round
    clients_per_round: int = option(0, ge=0)  # > 0: this many clients per round instead of a share
    local_epochs: int = option(2, ge=0)
    local_steps: int = option(0, ge=0)  # > 0: a fixed number of local steps instead of epochs
    batch_size: int = option(32, ge=1)
    lr: float = option(0.05, gt=0)
    lr_decay: float = option(1.0, gt=0, le=1)  # lr of round r is lr * lr_decay**r
    weight_decay: float = option(0.0, ge=0)
    momentum: float = option(0.0, ge=0, lt=1)  # local SGD momentum, reset every round
    clip_norm: float = option(0.0, ge=0)  # > 0: clip each local step's direction to this norm
    dropout: float = option(0.0, ge=0, lt=1)  # share of sampled clients that never report in a round
    min_local_work: float = option(1.0, gt=0, le=1)  # each client does a random share in [this, 1] of its steps
    eval_every: int = option(1, ge=1)
    eval_batch_size: int = option(1024, ge=1)
    checkpoint_every: int = option(0, ge=0)  # > 0: checkpoint every this many rounds (fedsim run --resume)
    # divergence warnings (the run goes on): an evaluated loss above this multiple of the initial
    # model's test loss, or this many evaluated rounds in a row at chance accuracy; 0 = off
    diverge_loss_factor: float = option(10.0, ge=0)
    diverge_chance_rounds: int = option(5, ge=0)


BACKENDS: dict[str, str] = {  # engine.backend: each backend, made by fedsim.backends.make_backend
    "serial": "one process, clients one after another (the reference)",
    "vectorized": "one process, a chunk of clients trained at once with torch.func.vmap (small models)",
    "auto": "vectorized when the model is small and vectorizes, else serial (docs/backends.md)",
    "ray": "a persistent pool of Ray actors on this machine or a cluster (docs/ray.md)",
    "flower": "Flower's simulation engine: ClientApps on Ray actors (docs/flower.md)",
}
WORKER_BACKENDS = ("serial", "vectorized", "auto")  # engine.worker_backend: how a Ray actor trains its share


@dataclass
class EngineConfig:
    """Where local training runs."""

    backend: str = option("serial", choices=tuple(BACKENDS))
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_clients_per_batch: int = option(0, ge=0)  # vectorized: clients trained at once; 0 = as many as fit
    workers: int = option(0, ge=0)  # ray: actors in the pool; 0 = as many as the CPUs/GPUs hold
    cpus_per_worker: float = option(1.0, gt=0)  # ray: CPUs each actor reserves (and its torch threads)
    gpus_per_worker: float = option(0.0, ge=0)  # ray: GPUs each actor reserves; fractions share a GPU
    ray_address: str = ""  # ray: join this cluster (host:port of `ray start --head`); "" = a local instance
    max_retries: int = option(2, ge=0)  # ray: times per round a dead actor is replaced and its share retried
    worker_backend: str = option("serial", choices=WORKER_BACKENDS)  # ray: how each actor trains its share
    track_memory: bool = False  # per-client peak activation bytes in metrics.csv (slows small models)
    threads: int = option(0, ge=0)  # torch threads of the run's process; 0 = auto (fedsim.threads)
    # bytes of client-state tensors held in RAM; beyond it the least recently used are spilled to
    # disk (the run folder's client_states/, else a temporary directory); 0 = no bound
    client_state_memory: int = option(0, ge=0)


@dataclass
class EvalConfig:
    """Federated evaluation: the global model on clients' local test data (data.client_test_fraction)."""

    clients: int = option(0, ge=0)  # evaluate a fixed, seeded sample of this many clients; 0 = every client
    # > 0: each evaluated client fine-tunes the global model this many local SGD steps (train.lr,
    # train.batch_size) on its training data before it is scored, as its personal model
    finetune_steps: int = option(0, ge=0)


ATTACKS = ("none", "sign_flip", "gaussian", "label_flip", "scaled")


@dataclass
class AttackConfig:
    """Byzantine clients (fedsim.attacks): a seeded share of the federation that attacks."""

    name: str = option("none", choices=ATTACKS)
    # share of all clients that are Byzantine, chosen once per run; a majority no rule can outvote
    fraction: float = option(0.0, ge=0, lt=0.5)
    scale: float = option(10.0, gt=0)  # "scaled": the factor a Byzantine client boosts its update by
    std: float = option(1.0, gt=0)  # "gaussian": std of the noise a Byzantine client sends as its update


@dataclass
class Config:
    """A whole experiment. `strategy`, `trainer` and `model` hold `name` plus that plugin's fields."""

    name: str = "experiment"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: PluginTable = field(default_factory=lambda: PluginTable(name="mlp"))
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: PluginTable = field(default_factory=lambda: PluginTable(name="fedavg"))
    trainer: PluginTable = field(default_factory=lambda: PluginTable(name="backprop"))
    engine: EngineConfig = field(default_factory=EngineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


# --------------------------------------------------------------------------- parsing


def closest(key: str, options: list[str], prefix: str = "") -> str:
    """' (did you mean 'PREFIX+option'?)' for the option closest to `key`, or ''."""
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
    """Instantiate the dataclass `cls` from a dict, enforcing the schema (see the module docstring)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    checks = {f.name: f.metadata.get("checks", {}) for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(
                f"unknown config key '{dotted}'{closest(key, names, prefix)}; valid keys: "
                + ", ".join(prefix + n for n in names)
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' must be a table")
            kwargs[key] = build_section(tp, value, dotted + ".")
        else:
            kwargs[key] = coerce(value, tp, dotted)
            check(kwargs[key], checks[key], dotted)
    return cls(**kwargs)


_BOUNDS = {  # op -> (test, as a comparison, as an interval bracket)
    "ge": (operator.ge, ">=", "["),
    "gt": (operator.gt, ">", "("),
    "le": (operator.le, "<=", "]"),
    "lt": (operator.lt, "<", ")"),
}


def check(value: Any, checks: dict[str, Any], key: str) -> None:
    """Enforce a field's declared range and choices (`option`); a list has each item checked.
    A float must be finite: TOML reads `inf` and `nan`, which no hyperparameter means."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"{key} must be a finite number, got {value}")
    choices = checks.get("choices")
    for item in items:
        if choices is not None and item not in choices:
            hint = closest(str(item), list(choices))
            raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {item!r}{hint}")
    bounds = [(op, checks[op]) for op in _BOUNDS if op in checks]
    if all(_BOUNDS[op][0](item, bound) for op, bound in bounds for item in items):
        return
    if len(bounds) == 2:
        (low, a), (high, b) = bounds
        rule = f"in {_BOUNDS[low][2]}{a:g}, {b:g}{_BOUNDS[high][2]}"
    else:
        ((op, bound),) = bounds
        rule = f"{_BOUNDS[op][1]} {bound:g}"
    what = f"{key} values" if isinstance(value, list) else key
    raise ConfigError(f"{what} must be {rule}, got {value}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `a.b.c=value`; the value is read as a TOML value, else taken as a bare string.

    A value that opens a TOML array, table or quoted string must be valid TOML: `[64,` is a
    typo, not the string "[64,".
    """
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value, e.g. data.alpha=0.1")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError as e:
        if raw[:1] in ("[", "{", '"', "'"):
            raise ConfigError(f"override '{text}': the value is not valid TOML ({e})") from None
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

    The schema is enforced here; plugin names and rules spanning sections are checked by
    `fedsim.validate.validate`.
    """
    tree = read_toml(path) if path is not None else {}
    for text in overrides:
        apply_override(tree, *parse_override(text))
    return config_from_dict(tree)


NAMED_TABLES = {"strategy": "fedavg", "trainer": "backprop", "model": "mlp"}  # name -> the default plugin


def config_from_dict(tree: dict[str, Any]) -> Config:
    tree = dict(tree)
    named = {}
    for key, default in NAMED_TABLES.items():
        table = tree.pop(key, {"name": default})
        if not isinstance(table, dict):
            raise ConfigError(f"config key '{key}' must be a table")
        table = PluginTable({"name": default, **table})
        if not isinstance(table["name"], str):
            raise ConfigError(f"config key '{key}.name' must be a string")
        named[key] = table
    config = build_section(Config, tree, "")
    for key, table in named.items():
        setattr(config, key, table)
    return config
