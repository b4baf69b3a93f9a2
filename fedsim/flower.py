"""The Flower bridge: a fedsim experiment as a Flower ServerApp and ClientApp (flwr 1.42 Message API).

Flower's ServerApp owns the loop, so the ServerApp's main *is* fedsim's round loop: it runs
`Simulation.run()` on the `flower` backend (`FlowerBackend`), which sends each round's
`RoundPlan` to the sampled clients' nodes through the ServerApp's `Grid` and reduces their
replies with `WeightedSum` in cohort order, as the serial backend does. Cohort sampling, the
lr schedule, the strategy's server update, evaluation and the run folder stay fedsim's; only
local training moves into Flower ClientApps, which run `train_client` on the partition that
the same config and seed give, and keep the strategy's per-client state in `Context.state`.

Records on the wire (one ArrayRecord per `State` group, so any strategy's extras travel):

    train message   "arrays"             the global params
                    "broadcast.<group>"  the strategy's broadcast extras
                    "config"             ConfigRecord {round, lr, work}
    train reply     "upload.<field>"     the client's upload
                    "metrics"            MetricRecord {num-examples, num-steps, train-loss}
    query reply     "metrics"            MetricRecord {partition-id}, and every "state.<group>"
    Context.state   "state.<group>"      the client's strategy state (SCAFFOLD's c_i)

Two ways in: `run_with_flower(sim)` runs on Flower's simulation engine (what
`engine.backend = "flower"` does from the CLI); `server_app` and `client_app` build the apps of
a Flower app that `flwr run` starts (experiments/flower_app).
"""

from __future__ import annotations

import functools
import os
import time
import tomllib
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable

import ray
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fedsim.aggregate import WeightedSum
from fedsim.backends.base import Backend, ClientReport, RoundOutput, RoundPlan, Task
from fedsim.backends.serial import SerialBackend
from fedsim.config import Config, config_from_dict
from fedsim.engine import Simulation
from fedsim.errors import ConfigError, FedsimError
from fedsim.strategy import State
from fedsim.trainer import join_state
from fedsim.tree import Params

BROADCAST, UPLOAD, STATE = "broadcast.", "upload.", "state."
NODE_WAIT_S = 60.0  # how long the server waits for the federation's nodes to register

_GRID: ContextVar[Grid | None] = ContextVar("fedsim_flower_grid", default=None)


# ---------------------------------------------------------------------------- records


def to_records(prefix: str, state: State) -> dict[str, ArrayRecord]:
    """One ArrayRecord per group of `state`, keyed `prefix + group`."""
    return {prefix + group: ArrayRecord(params) for group, params in state.items()}


def to_params(record: ArrayRecord, device: torch.device) -> Params:
    return {name: t.to(device) for name, t in record.to_torch_state_dict().items()}


def from_records(records: RecordDict, prefix: str, device: torch.device) -> State:
    """The State that `to_records(prefix, ...)` stored in `records`."""
    return {
        key.removeprefix(prefix): to_params(record, device)
        for key, record in records.array_records.items()
        if key.startswith(prefix)
    }


# ---------------------------------------------------------------------------- client side


@functools.lru_cache(maxsize=1)
def _client_backend(config_toml: str) -> SerialBackend:
    """The experiment's model, gradient function and device-resident client data, built once per
    client process like the engine builds them: the same partitioner and seed give the same split."""
    return SerialBackend(Simulation(config_from_dict(tomllib.loads(config_toml))).task)


def client_app(config_of: Callable[[Context], Config]) -> ClientApp:
    """A ClientApp that trains the fedsim client `node_config["partition-id"]` of the experiment
    `config_of(context)`, keeping its strategy state in `context.state` across rounds."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        backend = _client_backend(config_of(context).to_toml())
        task, content = backend.task, msg.content
        client_id = int(context.node_config["partition-id"])
        setup = content["config"]
        global_params = to_params(content["arrays"], task.device)
        state = from_records(context.state, STATE, task.device)
        if not state:  # a client's first round
            state = join_state(task.strategy.init_client_state(global_params), task.trainer.init_state(global_params))
        plan = RoundPlan(
            round=int(setup["round"]),
            lr=float(setup["lr"]),
            global_params=global_params,
            broadcast=from_records(content, BROADCAST, task.device),
            client_ids=[client_id],
            client_states={client_id: state},
            work={client_id: float(setup["work"])},
        )
        try:
            [job] = backend.executor.jobs(plan, [client_id])
            update = task.trainer.train(job, backend.executor.env)
        except FedsimError as err:  # e.g. a NaN loss: the server reports it in one line
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, str(err)), reply_to=msg)
        for key, record in to_records(STATE, join_state(update.strategy_state, update.trainer_state)).items():
            context.state[key] = record
        metrics = MetricRecord(
            {"num-examples": update.num_samples, "num-steps": update.num_steps, "train-loss": update.loss}
        )
        return Message(RecordDict({**to_records(UPLOAD, update.upload), "metrics": metrics}), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        state = {k: r for k, r in context.state.array_records.items() if k.startswith(STATE)}
        metrics = MetricRecord({"partition-id": int(context.node_config["partition-id"])})
        return Message(RecordDict({**state, "metrics": metrics}), reply_to=msg)

    return app


# ---------------------------------------------------------------------------- server side


class FlowerBackend(Backend):
    """Trains each round's cohort on Flower ClientApps, through the Grid of the running ServerApp.

    Made by the engine inside `server_app`'s main (`make_backend("flower", ...)`); fedsim client
    i is the node whose `node_config["partition-id"]` is i. Client states stay on the clients,
    so `RoundOutput.client_states` is empty; `client_states()` reads them back.
    """

    def __init__(self, task: Task) -> None:
        super().__init__(task)
        grid = _GRID.get()
        if grid is None:
            raise ConfigError(
                "engine.backend 'flower' runs on Flower's engine: start it with `fedsim run` "
                "or fedsim.flower.run_with_flower(sim), or from a Flower app (docs/flower.md)"
            )
        self.grid = grid
        self.client_of: dict[int, int] = {}  # node id -> fedsim client id, once discovered
        self.nodes = self._discover(len(task.client_data))
        self.client_of = {node: cid for cid, node in self.nodes.items()}
        self.rounds_run = 0

    def _discover(self, num_clients: int) -> dict[int, int]:
        """fedsim client id -> node id, asking every node for its partition id."""
        deadline = time.monotonic() + NODE_WAIT_S
        while len(node_ids := list(self.grid.get_node_ids())) < num_clients and time.monotonic() < deadline:
            time.sleep(0.05)
        if len(node_ids) != num_clients:
            raise ConfigError(
                f"the Flower federation has {len(node_ids)} nodes but data.num_clients = {num_clients}; "
                f"run it with num-supernodes = {num_clients}"
            )
        replies = self._query(node_ids, "nodes")
        nodes = {int(content["metrics"]["partition-id"]): node for node, content in replies.items()}
        if sorted(nodes) != list(range(num_clients)):
            raise ConfigError(
                f"the Flower nodes' partition ids must be 0..{num_clients - 1}, got {sorted(nodes)}"
            )
        return nodes

    @staticmethod
    def _message(content: RecordDict, node: int, kind: str, group: str) -> Message:
        return Message(content, dst_node_id=node, message_type=kind, group_id=group)

    def _query(self, node_ids: list[int], group: str) -> dict[int, RecordDict]:
        """Ask `node_ids` for their partition id and strategy state: node id -> reply content."""
        return self._exchange([self._message(RecordDict(), n, MessageType.QUERY, group) for n in node_ids])

    def _exchange(self, messages: list[Message]) -> dict[int, RecordDict]:
        """Send `messages` and wait for every reply: node id -> reply content."""
        replies = {}
        for reply in self.grid.send_and_receive(messages):
            node = reply.metadata.src_node_id
            if reply.has_error():
                who = f"client {self.client_of[node]}" if node in self.client_of else f"node {node}"
                raise FedsimError(f"Flower {who} failed: {reply.error.reason}")
            replies[node] = reply.content
        return replies

    def run_round(self, plan: RoundPlan) -> RoundOutput:
        strategy, device = self.task.strategy, self.task.device
        if self.rounds_run == 0 and plan.round > 1 and any(plan.client_states.values()):
            raise ConfigError(
                f"cannot resume strategy '{strategy.name}' on engine.backend 'flower': its client states "
                "live on the Flower clients, not in checkpoints"
            )
        shared = {"arrays": ArrayRecord(plan.global_params), **to_records(BROADCAST, plan.broadcast)}
        messages = []
        for cid in plan.client_ids:
            setup = ConfigRecord({"round": plan.round, "lr": plan.lr, "work": plan.work[cid]})
            content = RecordDict({**shared, "config": setup})
            messages.append(self._message(content, self.nodes[cid], MessageType.TRAIN, str(plan.round)))
        replies = self._exchange(messages)
        total = WeightedSum()
        uploads = [] if strategy.needs_all_uploads else None
        reports = []
        for cid in plan.client_ids:  # cohort order: the same reduction order as the serial backend
            content = replies[self.nodes[cid]]
            upload = from_records(content, UPLOAD, device)
            metrics = content["metrics"]
            num_samples = int(metrics["num-examples"])
            total.add(upload, strategy.upload_weights(num_samples))
            if uploads is not None:
                uploads.append(upload)
            num_steps, loss = int(metrics["num-steps"]), float(metrics["train-loss"])
            reports.append(ClientReport(cid, num_samples, num_steps, loss))
        self.rounds_run += 1
        return RoundOutput(total, uploads, {}, reports)

    def client_states(self) -> dict[int, State]:
        """Each participated client's strategy state, as its node keeps it in `Context.state`."""
        replies = self._query(list(self.nodes.values()), "states")
        device = self.task.device
        states = {self.client_of[node]: from_records(reply, STATE, device) for node, reply in replies.items()}
        return {cid: state for cid, state in sorted(states.items()) if state}


@contextmanager
def _serving(grid: Grid):
    """Make `grid` the one the `flower` backend trains through, for the duration."""
    token = _GRID.set(grid)
    try:
        yield
    finally:
        _GRID.reset(token)


def server_app(run: Callable[[Context], Any]) -> ServerApp:
    """A ServerApp whose main calls `run(context)` with the `flower` backend bound to its Grid.

    `run` builds and runs a fedsim `Simulation` (with `engine.backend = "flower"`), so fedsim's
    round loop is the ServerApp's main loop.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        with _serving(grid):
            run(context)

    return app


def _client_resources(sim: Simulation) -> dict[str, float]:
    """One CPU per client actor; on a GPU, the actors (one per CPU) share it evenly."""
    cpus = len(os.sched_getaffinity(0))
    return {"num_cpus": 1, "num_gpus": 1.0 / cpus if sim.device.type == "cuda" else 0.0}


def run_with_flower(sim: Simulation) -> dict[str, Any]:
    """Run `sim` on Flower's simulation engine (Ray backend), one virtual SuperNode per client.

    Writes what `sim.run()` writes (its callbacks run as usual) and returns the same summary;
    an error in the round loop is raised here. Without a Ray session open in this process, it
    starts a local one for Flower and ends it afterwards; an open session is used and left open.
    """
    if sim.config.engine.backend != "flower":
        raise ConfigError(
            f"run_with_flower needs engine.backend = 'flower', got '{sim.config.engine.backend}'"
        )
    config = sim.config
    summary: dict[str, Any] = {}
    ray_was_running = ray.is_initialized()
    try:
        with warnings.catch_warnings():  # Ray's notice about GPU env vars, irrelevant here
            warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
            run_simulation(
                server_app=server_app(lambda _context: summary.update(sim.run())),
                client_app=client_app(lambda _context: config),
                num_supernodes=config.data.num_clients,
                backend_config={
                    "client_resources": _client_resources(sim),
                    "init_args": {"address": "local"},  # a session of its own, never a stray `ray start`
                },
            )
    finally:
        if not ray_was_running:
            ray.shutdown()
    return summary
