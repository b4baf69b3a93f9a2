import pytest

from fedsim.errors import ConfigError
from fedsim.plugins import available_strategies, build_strategy, strategy_class
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
