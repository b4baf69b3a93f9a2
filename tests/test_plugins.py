import os
import subprocess
import sys

import pytest

from fedsim.data import load_dataset, partition_dataset
from fedsim.errors import ConfigError
from fedsim.models import build_model
from fedsim.plugins import (
    KINDS,
    available,
    available_strategies,
    build_named,
    build_strategy,
    listing,
    plugin_class,
    strategy_class,
)
from strategies.fedavg import FedAvg

PLUGIN = '''
from dataclasses import dataclass
from fedsim.strategy import Strategy

@dataclass
class Halved(Strategy):
    """Takes half the FedAvg step."""
    factor: float = 0.5
'''


def test_builtins_come_through_the_entry_point_group():
    assert "fedavg" in available_strategies()
    assert strategy_class("fedavg") is FedAvg


def test_module_and_file_references(tmp_path):
    assert strategy_class("strategies.fedavg:FedAvg") is FedAvg
    path = tmp_path / "my_strategy.py"
    path.write_text(PLUGIN)
    strategy = build_strategy({"name": f"{path}:Halved", "factor": 0.25})
    assert type(strategy).__name__ == "Halved" and strategy.factor == 0.25


def test_per_strategy_sub_tables_apply_only_to_their_strategy():
    table = {"name": "fedavg", "fedavg": {"weighting": "uniform"}, "fedavgm": {"momentum": 0.5}}
    assert build_strategy(table).weighting == "uniform"
    assert build_strategy({**table, "name": "fedavgm"}).momentum == 0.5


@pytest.mark.parametrize(
    "table, message",
    [
        ({"name": "fedsgd"}, "unknown strategy 'fedsgd'; choose one of: .*fedavg"),
        ({"name": "fedavg", "weighing": "uniform"}, r"'strategy.weighing' \(did you mean 'strategy.weighting'\?\)"),
        ({"name": "fedavg", "weighting": "median"}, "strategy.weighting must be"),
        ({"name": "fedavg", "weighting": 3}, "must be str"),
        ({"name": "collections:OrderedDict"}, "not a dataclass subclass"),
        ({"name": "no_such_module:X"}, "cannot import strategy module"),
        ({"name": "missing.py:X"}, "not found"),
    ],
)
def test_bad_strategy_tables(table, message):
    with pytest.raises(ConfigError, match=message):
        build_strategy(table)


# ------------------------------------------------------------------ every kind, one mechanism

KIND_PLUGINS = {
    "model": '''
from dataclasses import dataclass
from torch import nn
from fedsim.config import option
from fedsim.models import Model

@dataclass
class Linear(Model):
    """One linear layer on flattened inputs."""
    bias: bool = True
    def build(self, input_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes, bias=self.bias))
''',
    "dataset": '''
import numpy as np
from fedsim.data.datasets import Dataset, DatasetBundle

class Blobs(Dataset):
    """Two Gaussian blobs, 4 features."""
    def load(self, data, seed):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(200, 4)); y = (x[:, 0] > 0).astype(np.int64)
        return DatasetBundle.from_arrays("blobs", (x[:160], y[:160]), (x[160:], y[160:]), 2)
''',
    "partitioner": '''
import numpy as np
from fedsim.data.partition import Partition, Partitioner

class RoundRobin(Partitioner):
    """Sample i goes to client i mod num_clients."""
    def partition(self, train, num_clients, seed, data):
        return Partition([np.arange(k, len(train), num_clients) for k in range(num_clients)])
''',
}

BUILTINS = {
    "strategy": ("fedavg", "strategies.fedavg:FedAvg"),
    "trainer": ("backprop", "clients.backprop:Backprop"),
    "model": ("mlp", "fedsim.models:MLP"),
    "dataset": ("digits", "fedsim.data.datasets:Digits"),
    "partitioner": ("iid", "fedsim.data.partition:IID"),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_resolves_by_entry_point_and_module_path(kind):
    name, path = BUILTINS[kind]
    assert name in available(kind)
    assert plugin_class(kind, name) is plugin_class(kind, path)


@pytest.mark.parametrize("kind", sorted(KIND_PLUGINS))
def test_every_kind_resolves_from_a_file(kind, tmp_path):
    path = tmp_path / f"my_{kind}.py"
    path.write_text(KIND_PLUGINS[kind])
    cls_name = KIND_PLUGINS[kind].split("class ")[1].split("(")[0]
    cls = plugin_class(kind, f"{path}:{cls_name}")
    assert cls.__name__ == cls_name and cls.__doc__


def test_file_plugins_work_end_to_end(tmp_path):
    for kind, source in KIND_PLUGINS.items():
        (tmp_path / f"my_{kind}.py").write_text(source)
    bundle = load_dataset(f"{tmp_path}/my_dataset.py:Blobs", seed=0, num_clients=4)
    part = partition_dataset(bundle.train, f"{tmp_path}/my_partitioner.py:RoundRobin", num_clients=4, seed=0)
    assert [len(i) for i in part.indices] == [40, 40, 40, 40]
    net = build_model({"name": f"{tmp_path}/my_model.py:Linear", "bias": False}, bundle.input_shape, 2, seed=0)
    assert net(bundle.tensors("test")[0]).shape == (40, 2)


@pytest.mark.parametrize(
    "kind, name, message",
    [
        ("model", "vit", "unknown model 'vit'; choose one of: cifar_cnn, cnn, (.*, )?mlp, (.*, )?resnet110_gn"),
        ("model", "resnet18", "did you mean 'resnet18_gn'"),
        ("model", "fedsim.data.datasets:Digits", "not a dataclass subclass of fedsim.models.Model"),
        ("dataset", "fedsim.models:MLP", "not a subclass of fedsim.data.datasets.Dataset"),
        ("dataset", "digit", "unknown dataset 'digit'; choose one of: (.*, )?digits, .*hf:<name>, .* \\(did you mean 'digits'\\?\\)"),
        ("partitioner", "collections:OrderedDict", "not a subclass of fedsim.data.partition.Partitioner"),
        ("partitioner", "fedsim.data.partition:Nope", "no class 'Nope'"),
        ("trainer", "nope.py:X", "plugin file 'nope.py' not found"),
        ("strategy", "fedavg:x", "strategy 'fedavg' takes no ':' argument"),
    ],
)
def test_bad_names_and_classes_are_one_line_errors(kind, name, message):
    with pytest.raises(ConfigError, match=message) as err:
        plugin_class(kind, name)
    assert "\n" not in str(err.value)


def test_model_tables_take_fields_and_per_name_sub_tables():
    table = {"name": "cnn", "mlp": {"hidden": [8]}, "cnn": {"channels": [4]}}
    assert build_named("model", table).channels == [4]
    assert build_named("model", {**table, "name": "mlp"}).hidden == [8]
    with pytest.raises(ConfigError, match=r"model.hidden values must be > 0, got \[8, 0\]"):
        build_named("model", {"name": "mlp", "hidden": [8, 0]})
    with pytest.raises(ConfigError, match="unknown config key 'model.hidden'.*valid keys: model.channels"):
        build_named("model", {"name": "cnn", "hidden": [8]})


def test_fedsim_list_shows_an_installed_plugin_and_its_distribution(tmp_path):
    (tmp_path / "my_partitioner.py").write_text(KIND_PLUGINS["partitioner"])
    info = tmp_path / "fedsim_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fedsim-test-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[fedsim.partitioners]\nround_robin = my_partitioner:RoundRobin\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "fedsim.cli", "list"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if "round_robin" in line)
    assert "Sample i goes to client i mod num_clients" in row and "fedsim-test-plugin" in row
    for title in ("strategies", "trainers", "models", "datasets", "partitioners", "backends"):
        assert f"{title} (" in proc.stdout
    assert "hf:<name>" in proc.stdout and "dirichlet" in proc.stdout


def test_listing_reads_classes_from_their_source_and_imports_only_what_it_cannot_read(tmp_path, monkeypatch):
    (tmp_path / "never_run.py").write_text(
        'raise ImportError("fedsim list must not run this module")\n\n\n'
        'class Read:\n    """Described from the source."""\n\n    argument: str = "spec"\n'
    )
    (tmp_path / "re_export.py").write_text("from fedsim.data.partition import IID as Again\n")
    (tmp_path / "broken_source.py").write_text("class Broken(:\n")
    info = tmp_path / "fedsim_listing_test-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fedsim-listing-test\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[fedsim.partitioners]\nread = never_run:Read\nagain = re_export:Again\n"
        "broken = broken_source:Broken\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = {row.name: row for row in listing("partitioner")}
    assert rows["read:<spec>"].description == "Described from the source."
    assert rows["again"].description == "Uniform: a seeded shuffle cut into equal parts."
    broken = rows["broken"].description
    assert broken.startswith("(failed to load:") and "broken_source.py, line 1" in broken
    assert {rows[name].source for name in ("read:<spec>", "again", "broken")} == {"fedsim-listing-test"}
    assert "never_run" not in sys.modules and "broken_source" not in sys.modules
