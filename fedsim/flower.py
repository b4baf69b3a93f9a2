"""The `flower` backend, and the Flower apps of a fedsim experiment (flwr 1.42 Message API).

`FlowerBackend` is an ordinary backend: the engine's round loop samples the cohort, plans the
round and updates the server as on any backend; only local training runs on Flower's engine.
Made outside Flower, the backend starts Flower's simulation engine (`run_simulation`) on a
thread of its own, with a ServerApp whose main hands its `Grid` over and waits until the
backend closes; made inside a ServerApp that `server_app` built (`flwr run`), it trains
through that app's Grid. Either way each round sends one train message per sampled client to
its node, where the client's serial executor trains it, and reduces the replies with the
`RoundCollector` in cohort order, as the serial backend does.

Records on the wire (one ArrayRecord per `State` group, so any strategy's extras travel):

    train message   "arrays"             the global params
                    "broadcast.<group>"  the strategy's broadcast extras
                    "state.<group>"      the client's state (SCAFFOLD's c_i)
                    "config"             ConfigRecord {round, lr, work}
    train reply     "upload.<field>"     the client's upload
                    "state.<group>"      the client's new state
                    "metrics"            MetricRecord {num-examples, num-steps, train-loss,
                                         peak-activation-bytes, peak-cuda-bytes}
                    "diagnostics"        the trainer's per-sample report, when it has one
    diverged reply  "diverged"           MetricRecord {loss}: the client's loss was not finite
    query reply     "metrics"            MetricRecord {partition-id}: which fedsim client a node is

Client state travels with the messages and the engine keeps it, as on the other backends, so
checkpoints hold it and a resumed run continues bit-identically. Flower clients keep nothing
between messages but what each process caches once: the task, its serial executor (the model and
its gradient function) and the data of the clients it has trained.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import sys
import threading
import time
import tomllib
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import Any, Callable

import ray
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.common.logger import update_console_handler
from flwr.server.superlink.fleet.vce.backend import raybackend
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fedsim.backends.base import Backend, RoundOutput, RoundPlan, Task
from fedsim.backends.collect import RoundCollector
from fedsim.backends.serial import SerialExecutor
from fedsim.config import Config, config_from_dict
from fedsim.errors import ConfigError, FedsimError, TrainingDiverged, plugin_code
from fedsim.federation import build_federation
from fedsim.local import ClientUpdate
from fedsim.plugins import ship_file_plugins
from fedsim.strategy import State
from fedsim.trainer import join_state, split_state
from fedsim.tree import Params

BROADCAST, UPLOAD, STATE = "broadcast.", "upload.", "state."
DIVERGED = "diverged"
DIAGNOSTICS = "diagnostics"  # a client's per-sample report, e.g. FedLabel's pseudo-labels
NODE_WAIT_S = 60.0  # how long the server waits for the federation's nodes to register
START_TIMEOUT_S = 300.0  # how long Flower's engine may take to start its ServerApp
POLL_S = 0.01  # how often the server looks for replies
MIN_OBJECT_STORE_BYTES = 256 * 1024**2

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


def _one_line(err: BaseException) -> str:
    """A fedsim error's own first line; any other error's, after its type's name."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if isinstance(err, FedsimError) and lines:
        return lines[0]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


# ---------------------------------------------------------------------------- client side


class FlowerClient:
    """What a Flower client process keeps for a run: the task's serial executor (model and
    gradient function built once), which materialises each client when it trains."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.executor = SerialExecutor(task)

    def reply(self, msg: Message, client_id: int) -> Message:
        """Train `client_id` as the train message `msg` says; the reply carries its upload and new state."""
        task, content, device = self.task, msg.content, self.task.device
        setup = content["config"]
        plan = RoundPlan(
            round=int(setup["round"]),
            lr=float(setup["lr"]),
            global_params=to_params(content["arrays"], device),
            broadcast=from_records(content, BROADCAST, device),
            client_ids=[client_id],
            client_states={client_id: from_records(content, STATE, device)},
            work={client_id: float(setup["work"])},
        )
        [job] = self.executor.jobs(plan, [client_id])
        try:
            with task.memory_meter() as memory, plugin_code(plan.round, [client_id]):
                update = task.trainer.train(job, self.executor.env)
        except TrainingDiverged as err:  # the server raises it as the serial backend would
            return Message(RecordDict({DIVERGED: MetricRecord({"loss": err.loss})}), reply_to=msg)
        metrics = MetricRecord({
            "num-examples": update.num_samples,
            "num-steps": update.num_steps,
            "train-loss": update.loss,
            "peak-activation-bytes": memory.activation_bytes,
            "peak-cuda-bytes": memory.cuda_bytes,
        })
        records = {
            **to_records(UPLOAD, update.upload),
            **to_records(STATE, join_state(update.strategy_state, update.trainer_state)),
        }
        if update.diagnostics:
            records[DIAGNOSTICS] = ArrayRecord({k: v.cpu() for k, v in update.diagnostics.items()})
        return Message(RecordDict({**records, "metrics": metrics}), reply_to=msg)


def _client_task(config_toml: str) -> Task:
    """The backend Task of the experiment `config_toml`: the same partitioner and seed give
    every client process the same split as the server."""
    return build_federation(config_from_dict(tomllib.loads(config_toml))).task


@functools.lru_cache(maxsize=1)
def _client_of_config(config_toml: str) -> FlowerClient:
    return FlowerClient(_client_task(config_toml))


@functools.lru_cache(maxsize=1)
def _client_of_object(task_ref: ray.ObjectRef) -> FlowerClient:
    return FlowerClient(ray.get(task_ref))


def _client_app(client_of: Callable[[Context], FlowerClient]) -> ClientApp:
    """A ClientApp whose node `node_config["partition-id"]` = i trains fedsim client i."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        try:
            return client_of(context).reply(msg, int(context.node_config["partition-id"]))
        except Exception as err:  # one line for the server, not Flower's wrapped remote traceback
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, _one_line(err)), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({"partition-id": int(context.node_config["partition-id"])})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def client_app(config_of: Callable[[Context], Config]) -> ClientApp:
    """The ClientApp of a Flower app (`flwr run`) for the experiment `config_of(context)`; each
    client process builds the experiment's task once."""
    return _client_app(lambda context: _client_of_config(config_of(context).to_toml()))


# ---------------------------------------------------------------------------- server side


def server_app(run: Callable[[Context], Any]) -> ServerApp:
    """The ServerApp of a Flower app (`flwr run`): its main calls `run(context)`, which builds and
    runs a fedsim `Simulation` with `engine.backend = "flower"`; that backend trains through
    this app's Grid."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        token = _GRID.set(grid)
        try:
            run(context)
        finally:
            _GRID.reset(token)

    return app


class _ActorsOnlyRayBackend(raybackend.RayBackend):
    """Flower's Ray backend, except that on exit it ends its actors but not the Ray session,
    which is the FlowerBackend's to end, or the caller's to keep."""

    def terminate(self) -> None:
        if self.pool:
            self.pool.terminate_all_actors()


@contextmanager
def _flower_keeps_ray_open():
    """Have Flower's engine use `_ActorsOnlyRayBackend` (it looks its backend class up when it starts)."""
    original = raybackend.RayBackend
    raybackend.RayBackend = _ActorsOnlyRayBackend
    try:
        yield
    finally:
        raybackend.RayBackend = original


def _root_cause(err: BaseException) -> str:
    """The innermost cause in one line (Flower wraps errors in 'Simulation Runtime crashed')."""
    while err.__cause__ is not None:
        err = err.__cause__
    return _one_line(err)


class FlowerBackend(Backend):
    """Trains each round's cohort on Flower ClientApps (see the module docstring).

    Outside a Flower ServerApp it runs Flower's simulation engine in this process, one virtual
    SuperNode per fedsim client and one Ray actor per CPU (on a GPU the actors share it evenly).
    Without a Ray session open in this process it starts a local one and ends it on `close()`;
    a session the caller opened is used and left open. One Flower engine runs per process at
    a time (Flower's engine keeps process-wide state).
    """

    name = "flower"

    def __init__(self, task: Task) -> None:
        super().__init__(task)
        self.owns_session = False
        self.thread: threading.Thread | None = None
        self.released = threading.Event()  # ends the ServerApp main of our own Flower engine
        self.engine_error: BaseException | None = None
        self.client_of: dict[int, int] = {}  # node id -> fedsim client id, once discovered
        try:
            grid = _GRID.get()  # set inside a ServerApp that `server_app` built
            self.grid = grid if grid is not None else self._start_flower()
            self.nodes = self._discover(len(task.clients))
        except BaseException:
            self.close()
            raise
        self.client_of = {node: cid for cid, node in self.nodes.items()}

    def _start_flower(self) -> Grid:
        """Start Flower's simulation engine on a thread of its own; returns its ServerApp's Grid."""
        task = self.task
        cuda = task.device.type == "cuda"
        cpus = len(os.sched_getaffinity(0))
        if not ray.is_initialized():
            data_bytes = task.clients.data_bytes()
            with warnings.catch_warnings():  # Ray's notice about GPU env vars, irrelevant here
                warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
                ray.init(
                    address="local",  # a session of its own, never a stray `ray start`
                    num_cpus=cpus,
                    num_gpus=torch.cuda.device_count() if cuda else 0,
                    object_store_memory=max(MIN_OBJECT_STORE_BYTES, 2 * data_bytes),
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.ERROR,  # not Ray's notes on actors the backend ends
                )
            self.owns_session = True
        # once in the object store, read once per client process; Ray gives each actor its GPU as "cuda"
        # Flower's own notices (its deprecation of `run_simulation`) mean nothing to a fedsim user;
        # its errors still show, coloured only on a terminal
        update_console_handler(level=logging.ERROR, colored=sys.stderr.isatty())
        ship_file_plugins()
        task_ref = ray.put(replace(task, device=torch.device("cuda") if cuda else task.device))
        handover: queue.Queue[Grid | None] = queue.Queue()
        server = ServerApp()

        @server.main()
        def main(grid: Grid, _context: Context) -> None:
            handover.put(grid)
            self.released.wait()

        def serve() -> None:
            try:
                with _flower_keeps_ray_open():
                    run_simulation(
                        server_app=server,
                        client_app=_client_app(lambda _context: _client_of_object(task_ref)),
                        num_supernodes=len(task.clients),
                        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 1.0 / cpus if cuda else 0.0}},
                    )
            except BaseException as err:
                self.engine_error = err
            finally:
                handover.put(None)

        self.thread = threading.Thread(target=serve, name="fedsim-flower", daemon=True)
        self.thread.start()
        try:
            grid = handover.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            grid = None
        if grid is None:
            raise FedsimError(f"Flower's simulation engine did not start: {self._engine_failure()}")
        return grid

    def _engine_failure(self) -> str:
        if self.engine_error is None:
            return f"no ServerApp within {START_TIMEOUT_S:.0f} s"
        return _root_cause(self.engine_error)

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
        messages = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY, group_id="nodes")
                    for n in node_ids]
        replies = self._exchange(messages)
        nodes = {int(content["metrics"]["partition-id"]): node for node, content in replies.items()}
        if sorted(nodes) != list(range(num_clients)):
            raise ConfigError(
                f"the Flower nodes' partition ids must be 0..{num_clients - 1}, got {sorted(nodes)}"
            )
        return nodes

    def _exchange(self, messages: list[Message]) -> dict[int, RecordDict]:
        """Send `messages` and wait for every reply: node id -> reply content.

        A client's error, or the end of our own Flower engine, is one-line FedsimError.
        """
        waiting = set(self.grid.push_messages(messages))
        replies = {}
        while waiting:
            if self.thread is not None and not self.thread.is_alive():
                raise FedsimError(f"Flower's simulation engine stopped: {self._engine_failure()}")
            for reply in self.grid.pull_messages(waiting):
                waiting.discard(reply.metadata.reply_to_message_id)
                node = reply.metadata.src_node_id
                if reply.has_error():
                    who = f"client {self.client_of[node]}" if node in self.client_of else f"node {node}"
                    reason = reply.error.reason.strip().splitlines()
                    raise FedsimError(f"Flower {who} failed: {reason[0] if reason else reply.error.code}")
                replies[node] = reply.content
            if waiting:
                time.sleep(POLL_S)
        return replies

    def run_round(self, plan: RoundPlan) -> RoundOutput:
        strategy, device = self.task.strategy, self.task.device
        shared = {"arrays": ArrayRecord(plan.global_params), **to_records(BROADCAST, plan.broadcast)}
        messages = []
        for cid in plan.client_ids:
            setup = ConfigRecord({"round": plan.round, "lr": plan.lr, "work": plan.work[cid]})
            content = RecordDict({**shared, **to_records(STATE, plan.client_states[cid]), "config": setup})
            messages.append(
                Message(content, dst_node_id=self.nodes[cid], message_type=MessageType.TRAIN, group_id=str(plan.round))
            )
        replies = {self.client_of[node]: content for node, content in self._exchange(messages).items()}
        for cid in plan.client_ids:  # the first diverged client in cohort order, as on `serial`
            if DIVERGED in replies[cid]:
                raise TrainingDiverged(plan.round, cid, float(replies[cid][DIVERGED]["loss"]))
        collector = RoundCollector(strategy)
        for cid in plan.client_ids:  # cohort order: the same reduction order as the serial backend
            content = replies[cid]
            metrics = content["metrics"]
            strategy_state, trainer_state = split_state(from_records(content, STATE, device))
            diagnostics = to_params(content[DIAGNOSTICS], "cpu") if DIAGNOSTICS in content else {}
            upload = from_records(content, UPLOAD, device)
            if self.task.attack:
                upload = self.task.attack.corrupt(plan.round, cid, upload)
            update = ClientUpdate(
                upload, strategy_state, trainer_state,
                int(metrics["num-examples"]), int(metrics["num-steps"]), float(metrics["train-loss"]), diagnostics,
            )
            collector.add(cid, update, int(metrics["peak-activation-bytes"]), int(metrics["peak-cuda-bytes"]))
        return collector.output(plan.client_ids)

    def close(self) -> None:
        """End our own Flower engine (its ServerApp main returns, Flower stops its actors) and the
        Ray session when this backend started it."""
        self.released.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.owns_session:
            ray.shutdown()
            self.owns_session = False
