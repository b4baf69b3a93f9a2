"""Plugin discovery: one mechanism for every kind of plugin.

A plugin is named by its entry-point name, `package.module:Class` or `path/to/file.py:Class`:

| kind        | config key         | entry-point group     | interface                              |
|-------------|--------------------|-----------------------|----------------------------------------|
| strategy    | `strategy.name`    | `fedsim.strategies`   | `fedsim.strategy.Strategy`             |
| trainer     | `trainer.name`     | `fedsim.trainers`     | `fedsim.trainer.ClientTrainer`         |
| model       | `model.name`       | `fedsim.models`       | `fedsim.models.Model`                  |
| dataset     | `data.dataset`     | `fedsim.datasets`     | `fedsim.data.datasets.Dataset`         |
| partitioner | `data.partitioner` | `fedsim.partitioners` | `fedsim.data.partition.Partitioner`    |

Strategies, trainers and models are dataclasses built from their named table (`[strategy]`:
`name` plus the fields); datasets and partitioners read the `[data]` section and are made
with no arguments. A registered name may take an argument after a colon when its class says
what it means (`argument`, e.g. `hf:<name>` for a hub dataset). The built-ins register through
the same entry-point groups a third-party package uses, so a plugin is a first-class citizen.
Interfaces are imported only when a plugin of their kind is resolved. `fedsim list` reads each
class's docstring and `argument` from its module's source without running it (so without torch);
a class the source does not define by a plain `class` statement (a re-export) is imported.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from fedsim.config import BACKENDS, NAMED_TABLES, Config, PluginTable, build_section, closest
from fedsim.errors import ConfigError


FILE_PLUGIN_PREFIX = "fedsim_plugin_"  # + the file stem: the module name of a `file.py:Class` plugin


@dataclass(frozen=True)
class Kind:
    """One kind of plugin: how the config names it, where it registers, what it implements."""

    noun: str  # "strategy", in messages
    title: str  # "strategies", in `fedsim list`
    key: str  # the config key that names one
    group: str  # the entry-point group
    interface: str  # "module:Class" of the base class
    from_table: bool  # a dataclass built from a named table, else made with no arguments

    def base(self) -> type:
        module, attr = self.interface.split(":")
        return getattr(importlib.import_module(module), attr)


KINDS = {
    kind.noun: kind
    for kind in [
        Kind("strategy", "strategies", "strategy.name", "fedsim.strategies", "fedsim.strategy:Strategy", True),
        Kind("trainer", "trainers", "trainer.name", "fedsim.trainers", "fedsim.trainer:ClientTrainer", True),
        Kind("model", "models", "model.name", "fedsim.models", "fedsim.models:Model", True),
        Kind("dataset", "datasets", "data.dataset", "fedsim.datasets", "fedsim.data.datasets:Dataset", False),
        Kind(
            "partitioner", "partitioners", "data.partitioner", "fedsim.partitioners",
            "fedsim.data.partition:Partitioner", False,
        ),
    ]
}


@dataclass(frozen=True)
class Listing:
    """One row of `fedsim list`: a name to put in the config, what it is, which package provides it."""

    name: str
    description: str
    source: str


def _registered(kind: Kind) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in sorted(entry_points(group=kind.group), key=lambda e: e.name)}


def _first_line(doc: str | None) -> str:
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""


def _class_statement(ep: EntryPoint) -> ast.ClassDef | None:
    """The top-level `class` statement of the class `ep` names, parsed from its module's source.

    Only the parent packages are imported (to find the file). None when the module is not found
    or not a Python source file, or defines the name some other way (importing it tells why).
    """
    spec = importlib.util.find_spec(ep.module)
    if spec is None or not (spec.origin or "").endswith(".py"):
        return None
    tree = ast.parse(Path(spec.origin).read_bytes(), filename=spec.origin)
    return next((node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == ep.attr), None)


def _assigned_string(statement: ast.ClassDef, name: str) -> str:
    """The string literal a class body assigns to `name` (`argument = "name"`), else ""."""
    for node in statement.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        named = any(isinstance(target, ast.Name) and target.id == name for target in targets)
        if named and isinstance(node.value, ast.Constant):
            return node.value.value
    return ""


def _description(ep: EntryPoint) -> tuple[str, str]:
    """(argument, first docstring line) of the class `ep` names: from its source, else by importing it."""
    statement = _class_statement(ep)
    if statement is None:
        cls = ep.load()
        return getattr(cls, "argument", ""), _first_line(cls.__doc__)
    return _assigned_string(statement, "argument"), _first_line(ast.get_docstring(statement))


def listing(kind: str) -> list[Listing]:
    """The registered plugins of a kind, by name, described without importing them where possible."""
    rows = []
    for name, ep in _registered(KINDS[kind]).items():
        source = ep.dist.name if ep.dist is not None else "?"
        try:
            argument, description = _description(ep)
        except Exception as err:  # a broken third-party plugin must not break `fedsim list`
            rows.append(Listing(name, f"(failed to load: {err})", source))
            continue
        rows.append(Listing(f"{name}:<{argument}>" if argument else name, description, source))
    return rows


def catalogue() -> dict[str, list[Listing]]:
    """Everything `fedsim list` shows, by section title: every kind's plugins, then the backends."""
    found = {f"{kind.title} ({kind.key})": listing(noun) for noun, kind in KINDS.items()}
    found["backends (engine.backend)"] = [Listing(n, text, "fedsim") for n, text in BACKENDS.items()]
    return found


def available(kind: str) -> dict[str, str]:
    """Registered names of a kind -> the first line of each class's docstring."""
    return {row.name: row.description for row in listing(kind)}


def available_strategies() -> dict[str, str]:
    return available("strategy")


def available_trainers() -> dict[str, str]:
    return available("trainer")


def _load_from_file(path: str, attr: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"plugin file '{path}' not found")
    spec = importlib.util.spec_from_file_location(f"{FILE_PLUGIN_PREFIX}{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and type hints resolve names through it
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[spec.name]
        raise ConfigError(f"plugin file '{path}' {import_failure(err, file)}") from None
    return getattr(module, attr, None)


def import_failure(err: Exception, file: Path | None = None) -> str:
    """What went wrong importing a plugin, in a few words: the error and where (file:line)."""
    if isinstance(err, SyntaxError):
        return f"has a syntax error at {Path(err.filename or '?').name}:{err.lineno}: {err.msg}"
    frames = [f for f in traceback.extract_tb(err.__traceback__) if file is None or Path(f.filename).resolve() == file.resolve()]
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"failed to import{where}: {type(err).__name__}: {err}"


def ship_file_plugins() -> None:
    """Make Ray pickle the file plugins loaded so far by value: its worker processes cannot import
    a `file.py:Class` by name. The backends that start Ray call it, so a file plugin on any other
    backend does not import Ray (2 s)."""
    from ray import cloudpickle

    for name, module in list(sys.modules.items()):
        if name.startswith(FILE_PLUGIN_PREFIX):
            cloudpickle.register_pickle_by_value(module)


def unknown(kind: str, name: str) -> ConfigError:
    """The error for a name no `kind` plugin is registered under, with the names that are."""
    spec = KINDS[kind]
    return ConfigError(
        f"unknown {spec.noun} '{name}'; choose one of: {', '.join(available(kind))}"
        + closest(name, list(_registered(spec)))
    )


def check_names(config: Config) -> None:
    """Refuse a plugin name that nothing is registered under, from the entry points' metadata
    alone, so a misspelt name is one line before torch is imported (a `module:Class` or
    `file.py:Class` name is checked when it is built)."""
    for kind, spec in KINDS.items():
        section, key = spec.key.split(".")
        value = getattr(config, section)
        name = value[key] if isinstance(value, dict) else getattr(value, key)
        head, colon, _ = name.partition(":")
        if not colon and head not in _registered(spec):
            raise unknown(kind, name)


def plugin_class(kind: str, name: str) -> type:
    """The class `name` names for `kind` ("strategy", "model", ...): registered or by path."""
    spec = KINDS[kind]
    registered = _registered(spec)
    head, colon, argument = name.partition(":")
    if head in registered:
        cls = registered[head].load()
        takes = getattr(cls, "argument", "")
        if colon and not takes:
            raise ConfigError(f"{spec.noun} '{head}' takes no ':' argument; set {spec.key}={head}")
        if takes and not argument:
            raise ConfigError(f"{spec.noun} '{head}' needs its {takes} after a colon: {spec.key}={head}:<{takes}>")
    elif colon:
        target, attr = name.rsplit(":", 1)
        if target.endswith(".py"):
            cls = _load_from_file(target, attr)
        else:
            try:
                cls = getattr(importlib.import_module(target), attr, None)
            except ImportError as err:
                raise ConfigError(f"cannot import {spec.noun} module '{target}': {err}") from None
            except Exception as err:
                raise ConfigError(f"{spec.noun} module '{target}' {import_failure(err)}") from None
        if cls is None:
            raise ConfigError(f"{spec.noun} '{name}': no class '{attr}' in '{target}'")
    else:
        raise unknown(kind, name)
    base = spec.base()
    if not (isinstance(cls, type) and issubclass(cls, base)) or (spec.from_table and not dataclasses.is_dataclass(cls)):
        what = "a dataclass subclass" if spec.from_table else "a subclass"
        raise ConfigError(f"{spec.noun} '{name}' is not {what} of {base.__module__}.{base.__qualname__}")
    return cls


def strategy_class(name: str) -> type:
    """Resolve a strategy name, `package.module:Class` or `path/to/file.py:Class`."""
    return plugin_class("strategy", name)


def trainer_class(name: str) -> type:
    """Resolve a client-trainer name, `package.module:Class` or `path/to/file.py:Class`."""
    return plugin_class("trainer", name)


def build_strategy(table: dict[str, Any]):
    """Instantiate the strategy a config's `[strategy]` table names, checking its parameters."""
    return build_named("strategy", table)


def build_trainer(table: dict[str, Any]):
    """Instantiate the client trainer a config's `[trainer]` table names, checking its parameters."""
    return build_named("trainer", table)


def build_named(kind: str, table: dict[str, Any]):
    """The plugin a named table (`[strategy]`, `[trainer]`, `[model]`) names, built and validated.

    Sub-tables hold per-plugin parameters (`[strategy.fedavgm] momentum = 0.9`); only the
    chosen plugin's sub-table applies, so one config can sweep over plugin names. A key set
    both in the table and in the chosen sub-table is an error, not a silent choice.
    """
    prefix = KINDS[kind].key.removesuffix("name")
    params = dict(table)
    name = params.pop("name")
    per_name = {key: params.pop(key) for key in list(params) if isinstance(params[key], dict)}
    for key in per_name.get(name, {}).keys() & params.keys():
        raise ConfigError(f"{prefix}{key} is set in [{prefix[:-1]}] and in [{prefix}{name}]; keep one")
    params.update(per_name.get(name, {}))
    plugin = build_section(plugin_class(kind, name), params, prefix)
    plugin.validate()
    return plugin


def make(kind: str, name: str):
    """A dataset or partitioner instance (they take their settings from `[data]` when used)."""
    return plugin_class(kind, name)()


def resolved(config: Config) -> Config:
    """`config` with every field of its strategy, trainer and model written out, defaults included.

    A run folder records this form, so a run says all its hyperparameters; loading it back
    builds the same plugins. The chosen plugin's sub-table is folded into the table; the other
    plugins' sub-tables are kept as they were.
    """
    tables = {}
    for key in NAMED_TABLES:
        table = getattr(config, key)
        plugin = build_named(key, table)
        values = dataclasses.asdict(plugin)
        fields = {f.name: values[f.name] for f in dataclasses.fields(plugin) if f.init}
        others = {k: v for k, v in table.items() if k != table["name"]}
        tables[key] = PluginTable({**others, **fields})
    return dataclasses.replace(config, **tables)
