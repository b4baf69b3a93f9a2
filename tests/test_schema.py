"""The config schema: ranges and choices declared once per field, and the resolved config."""

from dataclasses import dataclass

import pytest

from fedsim.checkpoint import config_differences, prepare_run
from fedsim.config import build_section, load_config, option
from fedsim.errors import ConfigError
from fedsim.plugins import resolved
from fedsim.validate import validate


@dataclass
class Section:
    rate: float = option(0.5, gt=0, le=1)
    count: int = option(1, ge=1)
    widths: list[int] = option([4], gt=0)
    mode: str = option("fast", choices=("fast", "exact"))
    free: str = "anything"


@pytest.mark.parametrize(
    "values, message",
    [
        ({"rate": 0}, r"^s.rate must be in \(0, 1\], got 0.0$"),
        ({"rate": 1.5}, r"^s.rate must be in \(0, 1\], got 1.5$"),
        ({"count": 0}, r"^s.count must be >= 1, got 0$"),
        ({"rate": float("nan")}, r"^s.rate must be a finite number, got nan$"),
        ({"widths": [4, -1]}, r"^s.widths values must be > 0, got \[4, -1\]$"),
        ({"mode": "exakt"}, r"^s.mode must be one of fast, exact; got 'exakt' \(did you mean 'exact'\?\)$"),
        ({"mode": 3}, "config key 's.mode' must be str"),
        ({"moed": "fast"}, r"unknown config key 's.moed' \(did you mean 's.mode'\?\)"),
    ],
)
def test_declared_ranges_and_choices_are_enforced_with_one_line(values, message):
    with pytest.raises(ConfigError, match=message):
        build_section(Section, values, "s.")


def test_values_inside_the_declaration_pass_and_defaults_are_fresh():
    built = build_section(Section, {"rate": 1, "count": 3, "widths": 8, "mode": "exact", "free": "x"}, "s.")
    assert (built.rate, built.count, built.widths, built.mode) == (1.0, 3, [8], "exact")
    assert Section().widths is not Section().widths


def test_validate_rechecks_a_config_changed_in_python():
    config = load_config(None)
    config.train.rounds = 0
    with pytest.raises(ConfigError, match="train.rounds must be >= 1, got 0"):
        validate(config)


def test_rules_over_several_fields_stay_in_validate():
    with pytest.raises(ConfigError, match="set train.local_epochs >= 1 or train.local_steps >= 1"):
        validate(load_config(None, ["train.local_epochs=0"]))


def test_resolved_config_writes_every_default():
    config = load_config(None, ["strategy.name=fedavgm", "model.name=cnn"])
    assert config.strategy == {"name": "fedavgm"}
    full = resolved(config)
    assert full.strategy == {"name": "fedavgm", "weighting": "samples", "server_lr": 1.0, "momentum": 0.9}
    assert full.model == {"name": "cnn", "channels": [32, 64], "norm": "none"}
    assert full.trainer["name"] == "backprop"
    assert full.model.name == "cnn" and full.data == config.data


def test_resolved_config_round_trips_and_keeps_sub_tables(tmp_path):
    config = load_config(None, ["strategy.name=fedprox", "strategy.fedavgm.momentum=0.5", "strategy.fedprox.mu=0.1"])
    full = resolved(config)
    assert full.strategy["mu"] == 0.1 and full.strategy["fedavgm"] == {"momentum": 0.5}
    assert "fedprox" not in full.strategy  # folded into the table
    path = tmp_path / "config.toml"
    path.write_text(full.to_toml())
    again = load_config(path)
    assert again == full and resolved(again) == full


def test_a_key_in_the_table_and_the_chosen_sub_table_is_an_error():
    with pytest.raises(ConfigError, match=r"model.channels is set in \[model\] and in \[model.cnn\]; keep one"):
        validate(load_config(None, ["model.name=cnn", "model.channels=[8]", "model.cnn.channels=[4]"]))


def test_resolved_and_unresolved_are_no_difference_on_resume():
    config = load_config(None, ["strategy.name=scaffold"])
    assert config_differences(config.to_toml(), resolved(config)) == []
    assert config_differences(resolved(config).to_toml(), config) == []
    changed = load_config(None, ["strategy.name=scaffold", "strategy.server_lr=0.5"])
    assert config_differences(resolved(config).to_toml(), changed) == ["strategy.server_lr"]


def test_run_folder_records_the_resolved_config(tmp_path):
    config = load_config(
        None,
        ["data.num_clients=2", "train.rounds=1", "train.local_steps=1", "strategy.name=fedavgm", "model.hidden=[8]"],
    )
    prepare_run(config, tmp_path, resume=False).run()
    written = load_config(tmp_path / "config.toml")
    assert written.strategy["momentum"] == 0.9 and written.model == {"name": "mlp", "hidden": [8]}


def test_an_infinite_hyperparameter_is_refused_before_it_can_make_nans():
    # FedSpeed's lam = inf passes "> 0" and then divides to NaN in training
    with pytest.raises(ConfigError, match=r"^strategy.lam must be a finite number, got inf$"):
        validate(load_config(None, ["strategy.name=fedspeed", "strategy.lam=inf"]))
