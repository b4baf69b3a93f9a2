"""The speed benchmark's Flower runner: Flower 1.42's simulation engine set up as Flower advises.

`benchmarks.speed` calls `run` in the worker process it starts for the `flower` runner. Flower's
Ray backend ships its ClientApp to an actor with every message (cloudpickle). A function of the
module that runs as `__main__` travels by value, with its globals, so a data cache kept there
arrives empty with each message and every client call rebuilds the dataset, the partition and
the model. The ClientApp and its cache therefore live here, in a module the actors import by
name: a message carries a reference, and each actor process builds the workload once and keeps
it, as Flower's own examples do (the PyTorch template's `load_data` keeps its `FederatedDataset`
in a module global).

Setup, per Flower's "Run simulations" guide (https://flower.ai/docs/framework/how-to-run-simulations.html):
`client_resources` of one CPU and no GPU per ClientApp (as many ClientApps in parallel as there
are cores; on a GPU, four share it) and no `init_args` ("for the highest performance, do not set
`init_args`"). The server is Flower's `FedAvg` (Message API) with a central `evaluate_fn`.

Each reply also carries, in a ConfigRecord the strategy does not aggregate, its actor's process
id, how many times that actor has built the workload so far and the seconds the client spent in
`load_state_dict` + local SGD + `state_dict`: so a run shows the workload was built once per
actor and how much of a Flower round is the clients' own work. The driver's CPU seconds per
round (this process: the ServerApp, Flower's simulation engine, Ray's task submission) show
what the message path costs on the server side.
"""

from __future__ import annotations

import logging
import os
import time

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from benchmarks.workloads import WORKLOADS, accuracy, build_simulation, local_sgd, peak_rss_mb

_ACTOR_CACHE: dict = {}  # (workload, device) -> (model, client data, train config), per actor process
_ACTOR_BUILDS = {"count": 0}  # how often this process built a workload


def actor_workload(workload: str, device: str):
    """The workload's model, population and train config, built once per actor process."""
    key = (workload, device)
    if key not in _ACTOR_CACHE:
        torch.set_num_threads(1)  # one CPU per actor (client_resources num_cpus = 1)
        sim = build_simulation(WORKLOADS[workload], 1, device)
        _ACTOR_CACHE[key] = (sim.model, sim.population, sim.config.train, sim.device)
        _ACTOR_BUILDS["count"] += 1
    return _ACTOR_CACHE[key]


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    config = msg.content["config"]
    model, population, t, device = actor_workload(str(config["workload"]), str(config["device"]))
    start = time.perf_counter()
    x, y = population.client(int(context.node_config["partition-id"]), device).data
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    local_sgd(model, x, y, epochs=t.local_epochs, batch_size=t.batch_size, lr=float(config["lr"]))
    arrays = ArrayRecord(model.state_dict())
    actor = {"pid": os.getpid(), "builds": _ACTOR_BUILDS["count"], "train-s": time.perf_counter() - start}
    reply = {
        "arrays": arrays,
        "metrics": MetricRecord({"num-examples": len(y)}),
        "actor": ConfigRecord(actor),
    }
    return Message(RecordDict(reply), reply_to=msg)


class RecordingFedAvg(FedAvg):
    """Flower's FedAvg, noting each train reply's `actor` record before aggregating as usual."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.replies: list[dict] = []

    def aggregate_train(self, server_round: int, replies):
        replies = list(replies)
        for msg in replies:
            if msg.has_content():
                self.replies.append({"round": server_round, **dict(msg.content["actor"])})
        return super().aggregate_train(server_round, replies)


def run(workload: str, rounds: int, device: str) -> dict:
    """`rounds` of FedAvg on Flower's engine: each central evaluation's time, and the actors' records."""
    logging.getLogger("flwr").setLevel(logging.ERROR)
    sim = build_simulation(WORKLOADS[workload], rounds, device)
    t = sim.config.train
    num_clients, cohort = sim.config.data.num_clients, len(sim.sample_clients(1))
    ticks: list[float] = []
    driver_cpu: list[float] = []  # this process's CPU seconds (all threads) at each evaluation
    scores = {"accuracy": 0.0, "peak_mb": 0.0}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        sim.model.load_state_dict(arrays.to_torch_state_dict())
        scores["accuracy"] = accuracy(sim.model, sim.x_test, sim.y_test)
        ticks.append(time.perf_counter())
        driver_cpu.append(time.process_time())
        if server_round == rounds:
            scores["peak_mb"] = peak_rss_mb()  # before the simulation shuts its actors down
        return MetricRecord({"accuracy": scores["accuracy"]})

    strategy = RecordingFedAvg(
        fraction_train=cohort / num_clients,  # train.fraction, or train.clients_per_round of N
        fraction_evaluate=0.0,
        min_train_nodes=cohort,
        min_available_nodes=num_clients,
    )
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(sim.model.state_dict()),
            num_rounds=rounds,
            train_config=ConfigRecord({"lr": t.lr, "workload": workload, "device": str(sim.device)}),
            evaluate_fn=evaluate,
        )

    resources = {"num_cpus": 1, "num_gpus": 0.25 if sim.device.type == "cuda" else 0.0}
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_clients,
        backend_config={"client_resources": resources},
    )
    builds = {}
    for reply in strategy.replies:
        builds[reply["pid"]] = max(builds.get(reply["pid"], 0), reply["builds"])
    client_train_s = [
        sum(r["train-s"] for r in strategy.replies if r["round"] == round_) for round_ in range(1, rounds + 1)
    ]
    return {
        "ticks": ticks,
        "accuracy": scores["accuracy"],
        "peak_mb": scores["peak_mb"],
        "cohort": cohort,
        "flower": {
            "messages": len(strategy.replies),
            "actors": len(builds),
            "workload_builds": sum(builds.values()),
            "client_train_s": client_train_s,
            "driver_cpu_s": [b - a for a, b in zip(driver_cpu, driver_cpu[1:])],
        },
    }
