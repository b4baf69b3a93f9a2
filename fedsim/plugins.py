"""Strategy discovery: the `fedsim.strategies` entry-point group, `module:Class` or `file.py:Class`.

The built-in strategies register through the same entry-point group a third-party package
uses, so a plugin is a first-class citizen.
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

GROUP = "fedsim.strategies"


def available_strategies() -> dict[str, str]:
    """Registered strategy names -> the first line of each class's docstring."""
    found = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            doc = (ep.load().__doc__ or "").strip().splitlines()
        except Exception as err:  # a broken third-party plugin must not break `fedsim list`
            doc = [f"(failed to load: {err})"]
        found[ep.name] = doc[0] if doc else ""
    return found


def _load_from_file(path: str, attr: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"strategy file '{path}' not found")
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
    if ":" in name:
        target, attr = name.rsplit(":", 1)
        if target.endswith(".py"):
            cls = _load_from_file(target, attr)
        else:
            try:
                cls = getattr(importlib.import_module(target), attr, None)
            except ImportError as err:
                raise ConfigError(f"cannot import strategy module '{target}': {err}") from None
        if cls is None:
            raise ConfigError(f"strategy '{name}': no class '{attr}' in '{target}'")
    else:
        matches = [ep for ep in entry_points(group=GROUP) if ep.name == name]
        if not matches:
            names = sorted(ep.name for ep in entry_points(group=GROUP))
            raise ConfigError(f"unknown strategy '{name}'; choose one of: {', '.join(names)}")
        cls = matches[0].load()
    if not (isinstance(cls, type) and issubclass(cls, Strategy) and dataclasses.is_dataclass(cls)):
        raise ConfigError(f"strategy '{name}' is not a dataclass subclass of fedsim.strategy.Strategy")
    return cls


def build_strategy(table: dict[str, Any]) -> Strategy:
    """Instantiate the strategy a config's `[strategy]` table names, checking its parameters.

    Sub-tables hold per-strategy parameters (`[strategy.fedavgm] momentum = 0.9`); only the
    chosen strategy's sub-table applies, so one config can sweep over strategy names.
    """
    params = dict(table)
    name = params.pop("name")
    per_strategy = {key: params.pop(key) for key in list(params) if isinstance(params[key], dict)}
    params.update(per_strategy.get(name, {}))
    cls = strategy_class(name)
    strategy = build_section(cls, params, "strategy.")
    strategy.validate()
    return strategy
