"""The Ray backend: a persistent pool of actors trains each round's cohort, on one machine or a cluster.

Each actor builds its executor (model and gradient functions) once and receives every client's
data once (one object-store put, read zero-copy on the CPU; on a GPU copied to the device once). Each round the driver puts the plan (global params and
broadcast) in the object store once, gives each actor a share of the cohort balanced by local
steps, and merges the actors' partial weighted sums in actor order. Float64 partial sums round
to the same float32 means as the serial loop, so results are bit-identical to `serial` for any
number of workers. Client state travels in with the plan and back with the output; actors keep
none, so when an actor dies a fresh one replaces it, retries its share and gets the same result.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import warnings
from dataclasses import replace

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from fedsim import tree
from fedsim.backends import make_backend
from fedsim.backends.base import Backend, RoundOutput, RoundPlan, Task
from fedsim.backends.collect import RoundCollector
from fedsim.backends.vectorized import vectorizable_model
from fedsim.config import EngineConfig
from fedsim.errors import ConfigError, FedsimError, TrainingDiverged
from fedsim.plugins import ship_file_plugins
from fedsim.strategy import State

STARTUP_TIMEOUT_S = 300  # an actor that cannot be placed or built in this time is an error, not a hang
MIN_OBJECT_STORE_BYTES = 256 * 1024**2


class WorkerPoolError(FedsimError):
    """The Ray worker pool could not start, or a worker died more often than engine.max_retries allows."""


# --------------------------------------------------------------------------- pure helpers


def assign_shares(cohort: list[int], costs: dict[int, int], workers: int) -> list[list[int]]:
    """Split the cohort over `workers`, balancing total cost (longest-processing-time greedy).

    Clients go by decreasing cost (ties by id), each to the least-loaded worker (ties by worker
    index), so the split depends only on the costs, never on timing. Shares keep cohort order.
    """
    loads = [0] * workers
    owner: dict[int, int] = {}
    for cid in sorted(cohort, key=lambda c: (-costs[c], c)):
        worker = min(range(workers), key=lambda w: (loads[w], w))
        owner[cid] = worker
        loads[worker] += costs[cid]
    return [[cid for cid in cohort if owner[cid] == w] for w in range(workers)]


def pool_size(engine: EngineConfig, cpus: float, gpus: float, where: str) -> int:
    """Workers to start: `engine.workers`, or as many as `cpus` and `gpus` hold when it is 0.

    Raises ConfigError when the request does not fit, before any work starts.
    """
    per_cpu, per_gpu = engine.cpus_per_worker, engine.gpus_per_worker
    fit = math.floor(cpus / per_cpu + 1e-9)
    if per_gpu > 0:
        fit = min(fit, math.floor(gpus / per_gpu + 1e-9))
    workers = engine.workers or fit
    if workers == 0 or workers > fit:
        asked = max(workers, 1)
        who = f"engine.workers={workers}" if engine.workers else "one worker"
        raise ConfigError(
            f"{who} with engine.cpus_per_worker={per_cpu:g} and engine.gpus_per_worker="
            f"{per_gpu:g} needs {asked * per_cpu:g} CPUs and {asked * per_gpu:g} GPUs, but the {where} has "
            f"{cpus:g} CPUs and {gpus:g} GPUs; lower engine.workers or the per-worker resources"
        )
    return workers


def merge_outputs(strategy, cohort: list[int], outputs: list[RoundOutput]) -> RoundOutput:
    """The workers' partial outputs as one: sums merged in worker order, the rest in cohort order."""
    collector = RoundCollector(strategy)
    for output in outputs:
        collector.merge(output)
    return collector.output(cohort)


def _cpu(state: State) -> State:
    return {group: tree.to(params, "cpu") for group, params in state.items()}


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


# --------------------------------------------------------------------------- the actor


class PoolWorker:
    """A Ray actor: the task's population held (a fixed dataset's arrays as zero-copy views of the
    object store, shared by the workers of a node; a generated one's clients made when they
    train), the backend `engine.worker_backend` names built once over it ("serial": client by
    client, "vectorized": vmapped chunks, "auto": either), and a share of each round trained with it."""

    def __init__(self, task: Task, num_threads: int, engine: EngineConfig) -> None:
        torch.set_num_threads(num_threads)
        self.executor = make_backend(engine.worker_backend, task, engine)

    def node_id(self) -> str:
        """The Ray node this worker runs on (awaited at start-up, so it also means 'ready')."""
        return ray.get_runtime_context().get_node_id()

    def train(self, plan: RoundPlan, client_ids: list[int], client_states: dict[int, State]) -> RoundOutput:
        """Train this worker's share of the round; every tensor comes back on the CPU."""
        output = self.executor.run(replace(plan, client_states=client_states), client_ids)
        output.total.sums = _cpu(output.total.sums)
        if output.uploads is not None:
            output.uploads = [_cpu(u) for u in output.uploads]
        output.client_states = {cid: _cpu(s) for cid, s in output.client_states.items()}
        output.reports = [replace(r, diagnostics=tree.to(r.diagnostics, "cpu")) for r in output.reports]
        return output


# --------------------------------------------------------------------------- the backend


class RayBackend(Backend):
    """Trains each round's cohort on a persistent pool of Ray actors; see the module docstring.

    Without `engine.ray_address` a local Ray instance is started with just the resources the pool
    needs and shut down in `close()`; with it the driver joins that cluster and, on close, kills
    its actors and disconnects, leaving the cluster running. A Ray session the caller already
    opened (`ray.init` before the run) is used as is and left open.
    """

    name = "ray"

    def __init__(self, task: Task, engine: EngineConfig) -> None:
        super().__init__(task)
        self.engine = engine
        self.workers: list[ray.actor.ActorHandle] = []
        self.worker_nodes: list[str] = []  # the Ray node of each worker at start-up
        self.owns_session = False
        self.worker_args: tuple = ()  # what every worker, and the replacement of a dead one, is built from
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        engine, task = self.engine, self.task
        if ray.is_initialized():
            cpus, gpus, where = *_cluster_totals(), "Ray cluster"
        elif engine.ray_address:
            self._join(engine.ray_address)
            cpus, gpus, where = *_cluster_totals(), f"Ray cluster at {engine.ray_address}"
        else:
            cpus, gpus, where = len(os.sched_getaffinity(0)), torch.cuda.device_count(), "machine"
        size = pool_size(engine, cpus, gpus, where)
        if engine.worker_backend == "vectorized":  # its refusals once here, not in every actor
            vectorizable_model(task, instead="engine.worker_backend=serial")
        if not ray.is_initialized():
            self._start_local(size)
        device = torch.device("cuda") if task.device.type == "cuda" else task.device  # Ray picks the GPU
        ship_file_plugins()
        self.worker_args = (
            ray.put(replace(task, device=device)),  # once: a fixed dataset's arrays are read zero-copy
            max(1, int(engine.cpus_per_worker)),  # torch threads
            engine,
        )
        self.actor_class = ray.remote(PoolWorker).options(
            num_cpus=engine.cpus_per_worker, num_gpus=engine.gpus_per_worker, scheduling_strategy="SPREAD"
        )
        self.workers = [self._spawn() for _ in range(size)]
        self.worker_nodes = self._await_ready()

    def _spawn(self) -> ray.actor.ActorHandle:
        return self.actor_class.remote(*self.worker_args)

    def _join(self, address: str) -> None:
        _check_reachable(address)
        try:
            _init_quietly(address=address)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise ConfigError(
                f"cannot join the Ray cluster at engine.ray_address={address!r}: {_first_line(err)}"
            ) from None
        self.owns_session = True

    def _start_local(self, size: int) -> None:
        """A private local Ray instance with only the resources the pool needs."""
        task = self.task
        data_bytes = task.clients.data_bytes()
        _init_quietly(
            address="local",  # a new instance, even when this machine already runs a Ray cluster
            num_cpus=math.ceil(size * self.engine.cpus_per_worker - 1e-9),
            num_gpus=math.ceil(size * self.engine.gpus_per_worker - 1e-9),
            object_store_memory=max(MIN_OBJECT_STORE_BYTES, 2 * data_bytes),
        )
        self.owns_session = True

    def _await_ready(self) -> list[str]:
        refs = [w.node_id.remote() for w in self.workers]
        try:
            return ray.get(refs, timeout=STARTUP_TIMEOUT_S)
        except GetTimeoutError:
            raise WorkerPoolError(
                f"Ray could not start {len(self.workers)} workers within {STARTUP_TIMEOUT_S} s; "
                "the cluster's resources are taken (see `ray status`)"
            ) from None
        except (RayActorError, RayTaskError) as err:
            raise WorkerPoolError(f"a Ray worker failed to start: {_first_line(err)}") from None

    def run_round(self, plan: RoundPlan) -> RoundOutput:
        schedule = self.task.schedule
        costs = {cid: schedule.num_steps(int(self.task.clients.sizes[cid]), plan.work[cid]) for cid in plan.client_ids}
        shares = assign_shares(plan.client_ids, costs, len(self.workers))
        shared = ray.put(  # once per round, not per client; on the CPU, whatever device each node has
            replace(
                plan,
                global_params=tree.to(plan.global_params, "cpu"),
                broadcast=_cpu(plan.broadcast),
                client_states={},
            )
        )
        outputs = self._collect(plan, shared, shares)
        return merge_outputs(self.task.strategy, plan.client_ids, [outputs[w] for w in sorted(outputs)])

    def _collect(
        self, plan: RoundPlan, shared: ray.ObjectRef, shares: list[list[int]]
    ) -> dict[int, RoundOutput]:
        """Each busy worker's output, as they finish (no polling).

        A worker that dies is replaced by a fresh actor that retries its share, up to
        `engine.max_retries` times per round; the retry gives the same output, since a share is
        a pure function of the plan. A client that diverges is reported as the serial backend
        reports it: the first one in cohort order.
        """

        def submit(worker: int) -> ray.ObjectRef:
            share = shares[worker]
            states = {cid: _cpu(plan.client_states[cid]) for cid in share}
            return self.workers[worker].train.remote(shared, share, states)

        pending = {submit(w): w for w, share in enumerate(shares) if share}
        retries = [0] * len(shares)
        outputs: dict[int, RoundOutput] = {}
        diverged: list[TrainingDiverged] = []
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            worker = pending.pop(ref)
            try:
                outputs[worker] = ray.get(ref)
            except RayTaskError as err:
                if isinstance(err.cause, TrainingDiverged):
                    diverged.append(err.cause)
                elif isinstance(err.cause, FedsimError):
                    raise err.cause from None
                else:
                    raise
            except RayActorError as err:
                if retries[worker] == self.engine.max_retries:
                    raise WorkerPoolError(
                        f"Ray worker {worker} died in round {plan.round} while training clients "
                        f"{shares[worker]}, "
                        f"after {retries[worker]} retries (engine.max_retries={self.engine.max_retries}): "
                        f"{_first_line(err)}"
                    ) from None
                retries[worker] += 1
                self.workers[worker] = self._spawn()
                pending[submit(worker)] = worker
        if diverged:
            position = {cid: i for i, cid in enumerate(plan.client_ids)}
            raise min(diverged, key=lambda err: position[err.client_id])
        return outputs

    def close(self) -> None:
        """Kill the actors; shut down the local Ray instance, or disconnect from a joined cluster."""
        for worker in self.workers if ray.is_initialized() else ():
            ray.kill(worker, no_restart=True)
        self.workers = []
        self.worker_args = ()
        if self.owns_session:
            ray.shutdown()
            self.owns_session = False


def _cluster_totals() -> tuple[float, float]:
    resources = ray.cluster_resources()
    return float(resources.get("CPU", 0)), float(resources.get("GPU", 0))


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a `host:port` nobody listens on (ray.init would retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConfigError(
            f"cannot reach the Ray cluster at engine.ray_address={address!r} ({err.strerror or err}); "
            "start it with `ray start --head` and use the address it prints"
        ) from None


def _init_quietly(**kwargs) -> None:
    """`ray.init` without the dashboard, banner and forwarded worker logs (errors still come back)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="ray")
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, **kwargs)
