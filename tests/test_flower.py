"""The Flower bridge: a fedsim strategy runs on Flower's simulation engine and agrees with `serial`.

FedAvg and SCAFFOLD on digits, 5 clients, full participation, 3 rounds: the `flower` backend
(Flower's `run_simulation`, Ray actors) must reach the serial backend's final weights within
float tolerance, and SCAFFOLD's control variates must persist in the clients' `Context.state`.
Flower and Ray take seconds to start, so each of the two engine tests starts Flower once.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from flwr.app import Context, RecordDict
from flwr.cli.config_utils import load_and_validate
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from typer.testing import CliRunner

from fedsim import tree
from fedsim.cli import app
from fedsim.engine import Callback, Simulation
from fedsim.errors import ConfigError
from fedsim.flower import from_records, run_with_flower, to_records
from fedsim.results import load_weights
from tests.conftest import QUICKSTART, ROOT, small_config

FLOWER_APP = ROOT / "experiments" / "flower_app"

FIVE_CLIENTS = ["data.num_clients=5", "train.rounds=3", "train.fraction=1.0"]


def assert_close_trees(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


class ClientStatesPerRound(Callback):
    """Copies every client's strategy state after each round: from the engine's store on
    `serial`, from the clients' Flower `Context.state` on `flower`."""

    def __init__(self) -> None:
        self.rounds: dict[int, dict[int, dict]] = {}

    def on_round_end(self, sim: Simulation, record: dict) -> None:
        if sim.config.engine.backend == "flower":
            states = sim.backend.client_states()
        else:
            states = {cid: sim.client_states.get(cid) for cid in sim.client_states.client_ids()}
        self.rounds[record["round"]] = {
            cid: {group: tree.clone(params) for group, params in state.items()}
            for cid, state in states.items()
        }


def test_state_records_round_trip_exactly():
    state = {"c": {"w": torch.randn(3, 4), "b": torch.randn(4)}, "g": {"w": torch.randn(2)}}
    records = RecordDict(to_records("state.", state))
    back = from_records(records, "state.", torch.device("cpu"))
    assert back.keys() == state.keys()
    for group in state:
        assert all(torch.equal(back[group][k], state[group][k]) for k in state[group])


def test_flower_backend_outside_a_flower_server_is_one_config_error():
    with pytest.raises(ConfigError, match="run_with_flower"):
        Simulation(small_config(*FIVE_CLIENTS, "engine.backend=flower")).run()
    with pytest.raises(ConfigError, match="engine.backend = 'flower'"):
        run_with_flower(Simulation(small_config(*FIVE_CLIENTS)))


def test_the_example_flower_app_validates_and_builds_a_flower_experiment():
    app_config, _ = load_and_validate(FLOWER_APP / "pyproject.toml")  # what `flwr run` checks first
    spec = importlib.util.spec_from_file_location("fedsim_flower_app", FLOWER_APP / "fedsim_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert isinstance(module.server, ServerApp) and isinstance(module.client, ClientApp)
    defaults = app_config["tool"]["flwr"]["app"]["config"]
    run_config = {**defaults, "set": "engine.backend=serial train.rounds=2"}
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    config = module.experiment(context)
    assert config.engine.backend == "flower" and config.train.rounds == 2
    assert Simulation(config).strategy.name == "scaffold"


def test_fedavg_from_the_cli_on_flower_matches_serial(tmp_path):
    runner = CliRunner()
    overrides = [arg for o in FIVE_CLIENTS + ["engine.device=cpu"] for arg in ("--set", o)]
    for backend in ("serial", "flower"):
        args = ["run", str(QUICKSTART), *overrides, "--set", f"engine.backend={backend}", "-q"]
        result = runner.invoke(app, [*args, "--out", str(tmp_path / backend)])
        assert result.exit_code == 0, result.output
    assert_close_trees(load_weights(tmp_path / "flower"), load_weights(tmp_path / "serial"))
    serial, flower = ((tmp_path / b / "metrics.csv").read_text().splitlines() for b in ("serial", "flower"))
    assert len(flower) == len(serial) == 4  # header + 3 rounds
    accuracy = [[float(line.split(",")[1]) for line in rows[1:]] for rows in (serial, flower)]
    assert accuracy[1] == pytest.approx(accuracy[0], abs=0.01)


def test_scaffold_on_flower_matches_serial_and_keeps_client_state_across_rounds():
    config = ["strategy.name=scaffold", *FIVE_CLIENTS]
    serial_states, flower_states = ClientStatesPerRound(), ClientStatesPerRound()
    serial = Simulation(small_config(*config), [serial_states])
    serial.run()
    flower = Simulation(small_config(*config, "engine.backend=flower"), [flower_states])
    summary = run_with_flower(flower)

    assert summary["backend"] == "flower" and summary["rounds"] == 3
    assert_close_trees(flower.params, serial.params)
    assert_close_trees(flower.server_state["c"], serial.server_state["c"])
    assert flower.history.accuracies() == pytest.approx(serial.history.accuracies(), abs=0.01)
    for round_ in (1, 2, 3):  # each client's c_i lives on its Flower node and evolves like the store's
        assert flower_states.rounds[round_].keys() == serial_states.rounds[round_].keys() == set(range(5))
        for cid, state in serial_states.rounds[round_].items():
            assert_close_trees(flower_states.rounds[round_][cid]["c"], state["c"])
    first, last = flower_states.rounds[1][0]["c"], flower_states.rounds[3][0]["c"]
    assert any(not torch.equal(first[k], last[k]) for k in first)
