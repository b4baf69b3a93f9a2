"""A fedsim experiment as a Flower app, for `flwr run experiments/flower_app` (docs/flower.md).

Both apps read the experiment from Flower's run config: `experiment` (a fedsim TOML file in this
folder) plus `set` (fedsim overrides, space separated, as `fedsim run --set` takes them). The
ServerApp runs fedsim's round loop and writes fedsim's run folder to `out`.
"""

from pathlib import Path

from flwr.app import Context

from fedsim.config import Config, load_config
from fedsim.engine import Simulation
from fedsim.flower import client_app, server_app
from fedsim.results import RunFolder

HERE = Path(__file__).parent


def experiment(context: Context) -> Config:
    """The run's fedsim config; training always goes through Flower here."""
    run_config = context.run_config
    overrides = [*str(run_config["set"]).split(), "engine.backend=flower"]
    return load_config(HERE / str(run_config["experiment"]), overrides)


def run(context: Context) -> None:
    Simulation(experiment(context), [RunFolder(str(context.run_config["out"]))]).run()


server = server_app(run)
client = client_app(experiment)
