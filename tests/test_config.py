from pathlib import Path

import pytest

from fedsim.config import Config, load_config, parse_override
from fedsim.errors import ConfigError
from fedsim.validate import validate

QUICKSTART = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.toml"


def test_quickstart_loads_with_expected_values():
    c = load_config(QUICKSTART)
    assert (c.data.dataset, c.data.num_clients, c.data.alpha) == ("digits", 20, 0.5)
    assert (c.train.rounds, c.train.local_epochs, c.train.batch_size) == (30, 2, 32)
    assert c.strategy == {"name": "fedavg"}


def test_overrides_are_typed_from_toml_syntax():
    c = load_config(
        QUICKSTART,
        ["data.alpha=0.1", "train.rounds=50", "strategy.name=fedavg", "model.hidden=[64, 32]", "seed=7"],
    )
    assert c.data.alpha == 0.1 and c.train.rounds == 50 and c.seed == 7
    assert c.model["hidden"] == [64, 32]


def test_int_widens_to_float_but_not_the_reverse():
    assert load_config(None, ["data.alpha=1"]).data.alpha == 1.0
    with pytest.raises(ConfigError, match="train.rounds' must be int"):
        load_config(None, ["train.rounds=2.5"])


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'data.alpah' \(did you mean 'data.alpha'\?\)"):
        load_config(None, ["data.alpah=0.1"])


def test_unknown_section_is_rejected():
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        load_config(None, ["trian.rounds=3"])


def test_bare_strings_need_no_quotes_and_bools_are_not_ints():
    assert parse_override("engine.backend=serial") == (["engine", "backend"], "serial")
    with pytest.raises(ConfigError, match="must be int"):
        load_config(None, ["train.rounds=true"])


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["data.alpha"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.alpha=0", "data.alpha must be > 0"),
        ("data.alpha=-1", "data.alpha must be > 0"),
        ("train.fraction=0", r"train.fraction must be in \(0, 1\]"),
        ("train.fraction=1.5", r"train.fraction must be in \(0, 1\]"),
        ("train.rounds=0", "train.rounds must be >= 1"),
        ("train.lr=0", "train.lr must be > 0"),
        ("model.name=transformer", "unknown model 'transformer'"),
        ("engine.backend=gpu", "engine.backend must be one of serial, vectorized, auto, ray, flower; got 'gpu'"),
        ("engine.device=tpu", "engine.device 'tpu'"),
    ],
)
def test_bad_values_fail_validation(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(load_config(QUICKSTART, [override]))


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_resolved_config_round_trips_through_toml(tmp_path):
    c = load_config(QUICKSTART, ["data.alpha=0.05"])
    path = tmp_path / "config.toml"
    path.write_text(c.to_toml())
    assert load_config(path) == c
    assert isinstance(load_config(path), Config)


@pytest.mark.parametrize(
    "engine, fix",
    [
        (["engine.backend=vectorized"], "; set engine.backend=serial (or ray)"),
        (["engine.backend=ray", "engine.worker_backend=vectorized", "engine.device=cpu"], "; set engine.worker_backend=serial"),
    ],
)
def test_a_model_that_does_not_vectorize_is_refused_where_clients_train_vmapped(engine, fix):
    lstm = ["model.name=lstm", "model.hidden=256"]
    validate(load_config(QUICKSTART, lstm))  # serial trains it
    with pytest.raises(ConfigError) as err:
        validate(load_config(QUICKSTART, [*lstm, *engine]))
    message = str(err.value)
    assert message.startswith("model 'lstm' does not run under torch.func.vmap") and message.endswith(fix)
