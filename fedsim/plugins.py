"""Plugin discovery: an entry-point group per kind, or `module:Class` / `file.py:Class`.

Kinds: strategies (`fedsim.strategies`, subclasses of `fedsim.strategy.Strategy`) and client
trainers (`fedsim.trainers`, subclasses of `fedsim.trainer.ClientTrainer`). The built-ins
register through the same entry-point groups a third-party package uses, so a plugin is a
first-class citizen.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from fedsim.config import build_section
from fedsim.errors import ConfigError
from fedsim.strategy import Strategy
from fedsim.trainer import ClientTrainer

GROUP = "fedsim.strategies"
TRAINER_GROUP = "fedsim.trainers"


def available_strategies() -> dict[str, str]:
    """Registered strategy names -> the first line of each class's docstring."""
    return available(GROUP)


def available_trainers() -> dict[str, str]:
    """Registered client-trainer names -> the first line of each class's docstring."""
    return available(TRAINER_GROUP)


def available(group: str) -> dict[str, str]:
    """Registered names of entry-point `group` -> the first line of each class's docstring."""
    found = {}
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            doc = (ep.load().__doc__ or "").strip().splitlines()
        except Exception as err:  # a broken third-party plugin must not break `fedsim list`
            doc = [f"(failed to load: {err})"]
        found[ep.name] = doc[0] if doc else ""
    return found


def _load_from_file(path: str, attr: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"plugin file '{path}' not found")
    spec = importlib.util.spec_from_file_location(f"fedsim_plugin_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and type hints resolve names through it
    spec.loader.exec_module(module)
    _ship_by_value(module)
    return getattr(module, attr, None)


def _ship_by_value(module) -> None:
    """A file plugin cannot be imported by name in Ray worker processes: send its code along."""
    try:
        from ray import cloudpickle
    except ImportError:  # without Ray there are no worker processes to ship it to
        return
    cloudpickle.register_pickle_by_value(module)


def strategy_class(name: str) -> type[Strategy]:
    """Resolve a strategy name, `package.module:Class` or `path/to/file.py:Class`."""
    return plugin_class(name, GROUP, Strategy, "strategy")


def trainer_class(name: str) -> type[ClientTrainer]:
    """Resolve a client-trainer name, `package.module:Class` or `path/to/file.py:Class`."""
    return plugin_class(name, TRAINER_GROUP, ClientTrainer, "trainer")


def plugin_class(name: str, group: str, base: type, kind: str) -> type:
    """The dataclass subclass of `base` that `name` names in entry-point `group` (or by path)."""
    if ":" in name:
        target, attr = name.rsplit(":", 1)
        if target.endswith(".py"):
            cls = _load_from_file(target, attr)
        else:
            try:
                cls = getattr(importlib.import_module(target), attr, None)
            except ImportError as err:
                raise ConfigError(f"cannot import {kind} module '{target}': {err}") from None
        if cls is None:
            raise ConfigError(f"{kind} '{name}': no class '{attr}' in '{target}'")
    else:
        matches = [ep for ep in entry_points(group=group) if ep.name == name]
        if not matches:
            names = sorted(ep.name for ep in entry_points(group=group))
            raise ConfigError(f"unknown {kind} '{name}'; choose one of: {', '.join(names)}")
        cls = matches[0].load()
    if not (isinstance(cls, type) and issubclass(cls, base) and dataclasses.is_dataclass(cls)):
        raise ConfigError(
            f"{kind} '{name}' is not a dataclass subclass of {base.__module__}.{base.__qualname__}"
        )
    return cls


def build_strategy(table: dict[str, Any]) -> Strategy:
    """Instantiate the strategy a config's `[strategy]` table names, checking its parameters."""
    return build_named(table, strategy_class, "strategy.")


def build_trainer(table: dict[str, Any]) -> ClientTrainer:
    """Instantiate the client trainer a config's `[trainer]` table names, checking its parameters."""
    return build_named(table, trainer_class, "trainer.")


def build_named(table: dict[str, Any], resolve, prefix: str):
    """The plugin a `[strategy]`-like table names, built from its keys and validated.

    Sub-tables hold per-plugin parameters (`[strategy.fedavgm] momentum = 0.9`); only the
    chosen plugin's sub-table applies, so one config can sweep over plugin names.
    """
    params = dict(table)
    name = params.pop("name")
    per_name = {key: params.pop(key) for key in list(params) if isinstance(params[key], dict)}
    params.update(per_name.get(name, {}))
    plugin = build_section(resolve(name), params, prefix)
    plugin.validate()
    return plugin
