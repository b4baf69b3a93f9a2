"""The `flower` backend: an ordinary backend on Flower's simulation engine, bit-identical to `serial`.

Digits, 5 clients: FedAvg and SCAFFOLD on Flower (`run_simulation`, Ray actors) must end with
the serial backend's weights bit for bit, and a Flower run resumed from its checkpoint with the
uninterrupted run's. A Flower actor has one CPU and so one torch thread; the serial references
run with one thread too, so both compute with the same arithmetic. Flower and Ray take seconds
to start, so each test starts Flower as few times as it can.
"""

from __future__ import annotations

import importlib.util
import json
import re
import threading
from dataclasses import replace

import pytest
import ray
import torch
from flwr.app import Context, RecordDict
from flwr.cli.config_utils import load_and_validate
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation
from typer.testing import CliRunner

from fedsim.backends import make_backend
from fedsim.checkpoint import latest_checkpoint, prepare_run
from fedsim.cli import app
from fedsim.config import load_config
from fedsim.engine import Callback, Simulation
from fedsim.errors import FedsimError
from fedsim.flower import client_app, from_records, server_app, to_records
from fedsim.results import load_weights
from fedsim.sweep import run_sweep
from tests.conftest import QUICKSTART, ROOT, small_config

FLOWER_APP = ROOT / "experiments" / "flower_app"

FIVE_CLIENTS = ["data.num_clients=5", "train.rounds=3", "train.fraction=1.0"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The arithmetic of a one-CPU Flower actor, for the serial references."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def flower_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "fedsim-flower"]


def assert_equal_trees(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "not bit-identical"


def assert_equal_states(a, b):
    """Two `State`s (group -> params) are bit-identical."""
    assert a.keys() == b.keys()
    for group in a:
        assert_equal_trees(a[group], b[group])


def assert_same_stores(a, b):
    """Two runs' client-state stores hold the same clients with bit-identical states."""
    assert a.client_ids() == b.client_ids()
    for cid in a.client_ids():
        assert_equal_states(a.get(cid), b.get(cid))


class CrashIn(Callback):
    """Raises when `round_` is done, before it is checkpointed: the run resumes after the round before."""

    def __init__(self, round_: int) -> None:
        self.round = round_

    def on_round_done(self, sim: Simulation) -> None:
        if sim.round == self.round:
            raise RuntimeError("simulated crash")


def test_state_records_round_trip_exactly():
    state = {"c": {"w": torch.randn(3, 4), "b": torch.randn(4)}, "g": {"w": torch.randn(2)}}
    records = RecordDict(to_records("state.", state))
    back = from_records(records, "state.", torch.device("cpu"))
    assert back.keys() == state.keys()
    for group in state:
        assert all(torch.equal(back[group][k], state[group][k]) for k in state[group])


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


def test_the_apps_of_a_flower_app_train_through_the_servers_grid_and_match_serial():
    """What `flwr run experiments/flower_app` runs: the ServerApp's main is the round loop."""
    overrides = ["data.num_clients=5", "train.rounds=2", "train.local_epochs=1"]
    config = load_config(FLOWER_APP / "experiment.toml", overrides)
    runs, own_engines = [], []

    class OwnEngine(Callback):
        def on_run_start(self, sim: Simulation) -> None:
            own_engines.append(sim.backend.thread is not None)

    def run(_context: Context) -> None:
        runs.append(Simulation(config, [OwnEngine()]))
        runs[-1].run()

    run_simulation(
        server_app=server_app(run),
        client_app=client_app(lambda _context: config),
        num_supernodes=5,
        backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"address": "local", "num_cpus": 2}},
    )
    serial = Simulation(load_config(FLOWER_APP / "experiment.toml", [*overrides, "engine.backend=serial"]))
    serial.run()
    [flower] = runs
    assert flower.round == 2 and own_engines == [False]  # trained through the app's Grid
    assert_equal_trees(flower.params, serial.params)
    assert_same_stores(flower.client_states, serial.client_states)


def test_make_backend_flower_from_python_matches_serial_and_keeps_the_callers_ray_session():
    """A round matches serial's output (two Byzantine clients' noise included); a client's error
    is one line; Flower ends, Ray stays."""
    sim = Simulation(small_config("strategy.name=scaffold", *FIVE_CLIENTS, "attack.name=gaussian", "attack.fraction=0.4"))
    plan = sim.plan_round(1)
    reference = make_backend("serial", sim.task).run_round(plan)
    # a session of its own: "local" never joins the instance a test on the other xdist worker runs
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        backend = make_backend("flower", sim.task, sim.config.engine)
        try:
            output = backend.run_round(plan)
            broken = {cid: {"c": {k: torch.zeros(2, 3, 5, 7) for k in sim.params}} for cid in plan.client_ids}
            one_line = r"^Flower client \d failed: strategy 'scaffold' in client_begin raised RuntimeError: [^\n]*"
            with pytest.raises(FedsimError, match=one_line + r" \(round 1, client \d\)$"):
                backend.run_round(replace(plan, client_states=broken))  # a client's error, in one line
        finally:
            backend.close()
        assert ray.is_initialized() and not flower_threads()  # Flower ended, the session stays
    finally:
        ray.shutdown()
    assert_equal_states(output.total.means(), reference.total.means())
    assert output.reports == reference.reports
    assert output.client_states.keys() == reference.client_states.keys() == set(range(5))
    for cid, state in reference.client_states.items():
        assert_equal_states(output.client_states[cid], state)


def test_fedavg_from_the_cli_on_flower_matches_serial(tmp_path, capfd):
    runner = CliRunner()
    overrides = [arg for o in FIVE_CLIENTS + ["engine.device=cpu"] for arg in ("--set", o)]
    for backend in ("serial", "flower"):
        args = ["run", str(QUICKSTART), *overrides, "--set", f"engine.backend={backend}", "-q"]
        result = runner.invoke(app, [*args, "--out", str(tmp_path / backend)])
        assert result.exit_code == 0, result.output
    assert_equal_trees(load_weights(tmp_path / "flower"), load_weights(tmp_path / "serial"))
    serial, flower = ((tmp_path / b / "metrics.csv").read_text().splitlines() for b in ("serial", "flower"))
    assert len(flower) == len(serial) == 4  # header + 3 rounds
    accuracy = [[line.split(",")[1] for line in rows[1:]] for rows in (serial, flower)]
    assert accuracy[1] == accuracy[0]
    assert json.loads((tmp_path / "flower" / "summary.json").read_text())["backend"] == "flower"
    assert not ray.is_initialized() and not flower_threads()
    leaked = capfd.readouterr()  # what Flower and Ray wrote past fedsim: no banners, notices or colours
    assert "DEPRECATED" not in leaked.err + leaked.out and "\x1b[" not in leaked.err + leaked.out, leaked


def test_scaffold_on_flower_checkpoints_client_states_and_resumes_bit_identically(tmp_path):
    stateful = ["strategy.name=scaffold", "data.num_clients=5", "train.fraction=0.6", "train.rounds=4",
                "train.checkpoint_every=1"]
    serial = prepare_run(small_config(*stateful), tmp_path / "serial")
    serial.run()
    flower_config = small_config(*stateful, "engine.backend=flower")
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_run(flower_config, tmp_path / "resumed", [CrashIn(3)]).run()
    assert latest_checkpoint(tmp_path / "resumed").name == "round_000002"
    assert not ray.is_initialized() and not flower_threads()  # closed after the error too

    resumed = prepare_run(flower_config, tmp_path / "resumed", resume=True)
    assert resumed.round == 2 and len(resumed.client_states) > 0
    resumed.run()  # a crashed and resumed Flower run equals an uninterrupted serial one
    assert_equal_trees(resumed.params, serial.params)
    assert_equal_trees(resumed.server_state["c"], serial.server_state["c"])
    assert_same_stores(resumed.client_states, serial.client_states)
    assert resumed.history.accuracies() == serial.history.accuracies()
    assert_equal_trees(load_weights(tmp_path / "resumed"), load_weights(tmp_path / "serial"))


def test_a_diverging_flower_client_is_one_line_and_the_backend_closes(tmp_path):
    overrides = [*FIVE_CLIENTS, "engine.device=cpu", "engine.backend=flower", "train.lr=1e30"]
    args = ["run", str(QUICKSTART), *(a for o in overrides for a in ("--set", o)), "-q", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3, result.output  # as on serial
    last = result.output.strip().splitlines()[-1]
    assert re.fullmatch(r"error: training diverged: client \d had loss (nan|inf) in round 1 \(.*\)", last), last
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"
    assert not ray.is_initialized() and not flower_threads()


def test_a_sweep_runs_two_cells_on_flower_at_once_each_with_its_own_engine(tmp_path):
    overrides = [*FIVE_CLIENTS, "train.local_epochs=1", "engine.device=cpu", "train.rounds=2"]
    result = run_sweep(QUICKSTART, [], [0, 1], [*overrides, "engine.backend=flower"], tmp_path, 2)
    assert (result.total, result.finished, result.failed) == (2, 2, [])
    for seed in (0, 1):
        cell = tmp_path / f"seed={seed}"
        assert json.loads((cell / "summary.json").read_text())["backend"] == "flower"
        serial = Simulation(load_config(QUICKSTART, [*overrides, f"seed={seed}"]))
        serial.run()
        assert_equal_trees(load_weights(cell), {k: v.detach() for k, v in serial.params.items()})


def test_fedlabel_trains_on_flower_and_its_pseudo_labels_come_back():
    """A trainer that overrides the whole round (FedLabel) runs on Flower like on serial,
    diagnostics included, so metrics.csv gets the same pseudo-label columns."""
    sim = Simulation(small_config("trainer.name=fedlabel", "data.label_ratio=0.5", *FIVE_CLIENTS))
    plan = sim.plan_round(1)
    reference = make_backend("serial", sim.task).run_round(plan)
    backend = make_backend("flower", sim.task, sim.config.engine)
    try:
        output = backend.run_round(plan)
    finally:
        backend.close()
    assert_equal_states(output.total.means(), reference.total.means())
    for got, want in zip(output.reports, reference.reports):
        assert (got.client_id, got.num_samples, got.num_steps, got.loss) == (
            want.client_id, want.num_samples, want.num_steps, want.loss
        )
        assert want.diagnostics and got.diagnostics.keys() == want.diagnostics.keys()
        assert all(torch.equal(got.diagnostics[k], want.diagnostics[k]) for k in want.diagnostics)
    assert sim.trainer.round_metrics(output.reports, sim.hidden_labels) == pytest.approx(
        sim.trainer.round_metrics(reference.reports, sim.hidden_labels), nan_ok=True
    )
