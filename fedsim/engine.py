"""The round loop: sample a cohort, train it on a backend, aggregate, evaluate.

Read `Simulation.run` top to bottom to see one whole experiment. Cross-cutting concerns
(progress display, run folder, checkpoints) are `Callback`s, so the loop stays short.
`Simulation.snapshot` and `Simulation.restore` capture and reinstate everything a run has
accumulated between rounds (`SimulationState`); fedsim.checkpoint writes it to disk.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsim import seeding, tree
from fedsim.backends import make_backend
from fedsim.backends.base import RoundOutput, RoundPlan
from fedsim.client_state import ClientStateStore, state_bytes
from fedsim.cohort import cohort_size, reporting_size
from fedsim.config import Config
from fedsim.data import heterogeneity
from fedsim.divergence import DivergenceWatch
from fedsim.errors import ConfigError, plugin_code
from fedsim.evaluation import DISTRIBUTION_COLUMNS, PERSONAL_COLUMNS, ClientScores, ClientTestSets, finetuned, score
from fedsim.federation import build_federation
from fedsim.memory import model_state_bytes
from fedsim.plugins import resolved
from fedsim.population import ClientView
from fedsim.provenance import provenance
from fedsim.threads import run_threads
from fedsim.strategy import Aggregate, RoundInfo, State
from fedsim.schedule import batch_seeds
from fedsim.trainer import has_personal_models, join_state, split_state
from fedsim.tree import Params
from fedsim.validate import validate, validate_cohort


class Callback:
    """Hooks into a run; override what you need."""

    def on_run_start(self, sim: "Simulation") -> None: ...

    def on_round_end(self, sim: "Simulation", record: dict[str, Any]) -> None:
        """After an evaluated round, with its metrics record."""

    def on_round_done(self, sim: "Simulation") -> None:
        """After every round, evaluated or not, once `sim.round` and `sim.history` include it."""

    def on_warning(self, sim: "Simulation", message: str) -> None:
        """The run looks wrong (e.g. diverging) but goes on; `message` is one line."""

    def on_run_end(self, sim: "Simulation", summary: dict[str, Any], error: BaseException | None) -> None: ...


@dataclass
class History:
    """Per-round records of evaluated rounds, in order."""

    records: list[dict[str, Any]] = field(default_factory=list)

    def accuracies(self) -> list[float]:
        return [r["test_accuracy"] for r in self.records]


@dataclass
class SimulationState:
    """Everything a run accumulates between rounds; the rest is rebuilt from the config.

    No random-generator state is kept: every draw derives from (seed, round, client id)
    (fedsim.seeding), so the round number is all a resumed run needs to draw the same.
    """

    round: int
    params: Params
    server_state: State
    client_states: dict[int, int]  # client id -> segment file of the store's directory (ClientStateStore.flush)
    history: list[dict[str, Any]]
    wall_s: float  # training wall time so far


class Simulation:
    """One federated experiment, built and validated from a Config before any training.

    `state_dir` is where client states spill beyond `engine.client_state_memory` and where
    checkpoints find them (a run folder's `client_states/`); None = a temporary directory.
    """

    def __init__(self, config: Config, callbacks: list[Callback] = (), state_dir: str | Path | None = None) -> None:
        validate(config)
        self.client_states = ClientStateStore(config.engine.client_state_memory, state_dir)  # checks state_dir
        self.callbacks = list(callbacks)
        federation = build_federation(config)
        if config.data.num_clients == 0:  # one client per natural client: counted by the split
            data = dataclasses.replace(config.data, num_clients=len(federation.population))
            config = dataclasses.replace(config, data=data)
            validate_cohort(config)
        self.config = config
        self.strategy, self.trainer = federation.strategy, federation.trainer
        self.task, self.device = federation.task, federation.task.device
        self.population = federation.population
        self.hidden_labels = ClientView(self.population, field="hidden")  # for the trainer's diagnostics
        self.model, self.params = federation.model, federation.params
        self.statistics = federation.statistics  # the global model's BatchNorm statistics: the initial ones
        self.x_test, self.y_test = (t.to(self.device) for t in self.population.test)
        validation = self.population.validation
        self.validation = validation and tuple(t.to(self.device) for t in validation)
        self.client_test_sets = self.federated_evaluation_sets()
        self.client_scores: ClientScores | None = None  # of the latest evaluated round
        # each client's own model is scored too: the trainer's personal model, or the fine-tuned global one
        self.personal = self.client_test_sets is not None and (
            has_personal_models(self.trainer) or config.eval.finetune_steps > 0
        )
        self.personal_scores: ClientScores | None = None
        # metrics.csv columns beyond the always-present ones: evaluation sets, trainer diagnostics
        self.diagnostic_columns = (
            (["val_accuracy", "val_loss"] if self.validation else [])
            + (DISTRIBUTION_COLUMNS if self.client_test_sets else [])
            + (PERSONAL_COLUMNS if self.personal else [])
            + list(self.trainer.metric_columns)
            + list(self.strategy.metric_columns)
        )
        self.model_state_bytes = model_state_bytes(self.model, momentum=config.train.momentum > 0)
        self.server_state = self.strategy.init_server_state(self.params)
        self.round_info: RoundInfo | None = None  # of the latest server update
        budget, one = config.engine.client_state_memory, state_bytes(self.new_client_state())
        if 0 < budget < one:
            raise ConfigError(
                f"engine.client_state_memory = {budget} bytes cannot hold one client's state ({one} bytes); "
                "raise it, or set 0 for no bound"
            )
        self.history = History()
        self.round = 0
        self.backend = None
        self.threads = run_threads(config.engine, self.model, self.x_test[:1], config.train.batch_size)
        self.warnings: list[str] = []
        self.divergence = self.divergence_watch()
        self._wall_before = 0.0  # wall time of the rounds before a resume
        self._run_start: float | None = None

    # ------------------------------------------------------------------ one round
    def sample_clients(self, round_: int) -> list[int]:
        """The round's reporting cohort, sorted: m clients drawn without replacement, seeded by
        (seed, round), less the `train.dropout` share that never reports (at least one stays)."""
        n, t = self.config.data.num_clients, self.config.train
        rng = seeding.numpy_rng(self.config.seed, "sample", round_)
        chosen = rng.choice(n, size=cohort_size(n, t.fraction, t.clients_per_round), replace=False)
        if t.dropout > 0:
            drop_rng = seeding.numpy_rng(self.config.seed, "dropout", round_)
            chosen = drop_rng.choice(chosen, size=reporting_size(len(chosen), t.dropout), replace=False)
        return sorted(int(c) for c in chosen)

    def local_work(self, round_: int, client_id: int) -> float:
        """Share of its local steps a client completes, uniform in [train.min_local_work, 1]."""
        low = self.config.train.min_local_work
        if low >= 1:
            return 1.0
        return float(seeding.numpy_rng(self.config.seed, "work", round_, client_id).uniform(low, 1.0))

    def lr_at(self, round_: int) -> float:
        t = self.config.train
        return t.lr * t.lr_decay ** (round_ - 1)

    def new_client_state(self) -> State:
        """The state of a client that has never participated: the strategy's and the trainer's."""
        return join_state(self.strategy.init_client_state(self.params), self.trainer.init_state(self.params))

    def plan_round(self, round_: int) -> RoundPlan:
        cohort = self.sample_clients(round_)
        stored = self.client_states.get_many(cohort)
        states = {cid: stored[cid] if cid in stored else self.new_client_state() for cid in cohort}
        return RoundPlan(
            round=round_,
            lr=self.lr_at(round_),
            global_params=self.params,
            broadcast=self.strategy.broadcast(self.server_state),
            client_ids=cohort,
            client_states=states,
            work={cid: self.local_work(round_, cid) for cid in cohort},
        )

    def apply_round(self, plan: RoundPlan, output: RoundOutput) -> float:
        """Server update from a round's output; returns the round's sample-weighted train loss."""
        self.client_states.update(output.client_states)
        aggregate = Aggregate(
            means=output.total.means(next(iter(self.params.values())).dtype),  # the model's precision
            uploads=output.uploads,
            num_samples=[r.num_samples for r in output.reports] if output.uploads is not None else None,
        )
        self.round_info = RoundInfo(
            plan.round, plan.lr, self.config.data.num_clients, len(output.reports), self.config.seed
        )
        self.params, self.server_state = self.strategy.server_update(
            self.params, self.server_state, aggregate, self.round_info
        )
        weights = np.array([r.num_samples for r in output.reports], dtype=float)
        losses = np.array([r.loss for r in output.reports])
        return float((weights * losses).sum() / weights.sum())

    def global_model(self) -> Params:
        """The global model's params as evaluation uses them: with its BatchNorm statistics, if any."""
        return {**self.params, **self.statistics}

    def evaluate(self) -> tuple[float, float]:
        """Central test loss and accuracy of the global model."""
        return score(self.model, self.global_model(), (self.x_test, self.y_test), self.config.train.eval_batch_size)

    def federated_evaluation_sets(self) -> ClientTestSets | None:
        """The local test data federated evaluation scores: every client's, or a fixed seeded sample
        of `eval.clients` of them (only those are materialised); None without client test data."""
        if self.config.data.client_test_fraction == 0:
            return None
        n, sample = len(self.population), self.config.eval.clients
        ids = list(range(n))
        if 0 < sample < n:
            ids = sorted(int(c) for c in seeding.numpy_rng(self.config.seed, "eval_clients").choice(n, sample, replace=False))
        return ClientTestSets(ids, [self.population.client(cid).test for cid in ids], self.device)

    def evaluation_metrics(self) -> dict[str, float]:
        """Validation and federated evaluation of the global model, for the round's record."""
        metrics: dict[str, float] = {}
        batch = self.config.train.eval_batch_size
        if self.validation:
            metrics["val_loss"], metrics["val_accuracy"] = score(self.model, self.global_model(), self.validation, batch)
        if self.client_test_sets:
            self.client_scores = self.client_test_sets.score(self.model, self.global_model(), batch)
            metrics.update(self.client_scores.distribution())
        if self.personal:
            self.personal_scores = self.client_test_sets.score_each(self.model, self.personal_models(), batch)
            metrics.update(self.personal_scores.distribution("personal_accuracy_"))
        return metrics

    def personal_models(self) -> list[Params]:
        """The params each evaluated client uses on its own: the global model fine-tuned for
        `eval.finetune_steps` on its training data, or its trainer's personal model (a client
        that never trained has the one of a new client)."""
        steps = self.config.eval.finetune_steps
        ids = self.client_test_sets.client_ids.tolist()
        stored = self.client_states.get_many(ids) if steps == 0 else {}
        models = []
        for cid in ids:
            if steps > 0:
                data = self.population.client(cid, self.device).data
                [seed] = batch_seeds(self.config.seed, "finetune", self.round, [cid])
                lr = self.lr_at(self.round)
                models.append(finetuned(self.model, self.params, data, steps, self.config.train.batch_size, lr, int(seed)))
            else:
                _, trainer_state = split_state(stored[cid] if cid in stored else self.new_client_state())
                trainer_state = {g: tree.to(p, self.device) for g, p in trainer_state.items()}
                models.append(self.trainer.personal_params(self.params, trainer_state))
        return models

    def divergence_watch(self) -> DivergenceWatch:
        """Divergence is judged against the initial model (so a resumed run judges alike)."""
        initial_loss, _ = self.evaluate()
        targets = self.y_test.flatten()  # every target position
        majority = float(torch.bincount(targets).max()) / len(targets)
        t = self.config.train
        return DivergenceWatch(initial_loss, majority, t.diverge_loss_factor, t.diverge_chance_rounds)

    def watch(self, record: dict[str, Any]) -> str | None:
        warning = self.divergence.check(record)
        if warning is not None:
            self.warnings.append(warning)
        return warning

    # ------------------------------------------------------------------ state
    def snapshot(self) -> SimulationState:
        """The run's state after `self.round` rounds (tensors on the CPU, shared with the run); the
        client states changed since the last snapshot are written to the store's files, which the
        snapshot references."""
        return SimulationState(
            round=self.round,
            params=tree.to(self.params, "cpu"),
            server_state={g: tree.to(p, "cpu") for g, p in self.server_state.items()},
            client_states=self.client_states.flush(),
            history=list(self.history.records),
            wall_s=self.wall_s(),
        )

    def restore(self, state: SimulationState) -> None:
        """Continue from `state`: the next `run` starts at round `state.round + 1`."""
        self.round = state.round
        self.params = tree.to(state.params, self.device)
        self.server_state = {g: tree.to(p, self.device) for g, p in state.server_state.items()}
        self.client_states.restore(state.client_states)
        self.history = History(list(state.history))
        for record in self.history.records:  # the warnings of the rounds before the resume
            self.watch(record)
        self._wall_before = state.wall_s

    def wall_s(self) -> float:
        """Training wall time so far, counting the rounds run before a resume."""
        running = time.perf_counter() - self._run_start if self._run_start is not None else 0.0
        return self._wall_before + running

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        """Train the remaining rounds; returns the summary. Callbacks see every evaluated round."""
        self._run_start = time.perf_counter()
        threads_before = torch.get_num_threads()
        torch.set_num_threads(self.threads)  # restored at the end: a caller's process keeps its setting
        error: BaseException | None = None
        try:
            self.backend = make_backend(self.config.engine.backend, self.task, self.config.engine)
            for cb in self.callbacks:
                cb.on_run_start(self)
            t = self.config.train
            for round_ in range(self.round + 1, t.rounds + 1):
                round_start = time.perf_counter()
                with plugin_code(round_):
                    plan = self.plan_round(round_)
                    output = self.backend.run_round(plan)
                    train_loss = self.apply_round(plan, output)
                self.round = round_
                if round_ % t.eval_every == 0 or round_ == t.rounds:
                    test_loss, test_acc = self.evaluate()
                    record = {
                        "round": round_,
                        "test_accuracy": test_acc,
                        "test_loss": test_loss,
                        "train_loss": train_loss,
                        "num_clients": len(output.reports),
                        "lr": plan.lr,
                        "round_s": time.perf_counter() - round_start,
                        "wall_s": self.wall_s(),
                        "peak_activation_bytes": max(r.peak_activation_bytes for r in output.reports),
                        "model_state_bytes": self.model_state_bytes,
                        "peak_cuda_bytes": max(r.peak_cuda_bytes for r in output.reports),
                    }
                    record.update(self.evaluation_metrics())
                    if self.trainer.metric_columns or self.strategy.metric_columns:
                        with plugin_code(round_):
                            record.update(self.trainer.round_metrics(output.reports, self.hidden_labels))
                            record.update(self.strategy.round_metrics(self.round_info))
                    self.history.records.append(record)
                    warning = self.watch(record)
                    for cb in self.callbacks:
                        cb.on_round_end(self, record)
                    for cb in self.callbacks if warning is not None else ():
                        cb.on_warning(self, warning)
                for cb in self.callbacks:
                    cb.on_round_done(self)
        except BaseException as err:
            error = err
            raise
        finally:
            torch.set_num_threads(threads_before)
            if self.backend is not None:
                self.backend.close()
            summary = self.summary(self.wall_s(), error)
            for cb in self.callbacks:
                cb.on_run_end(self, summary, error)
        return summary

    def summary(self, wall_s: float, error: BaseException | None = None) -> dict[str, Any]:
        """The run's outcome and what it was: status, accuracies, every hyperparameter of its
        strategy, trainer and model (defaults included), where it ran and which fedsim ran it."""
        accs = self.history.accuracies()
        c = resolved(self.config)
        if error is None:
            status = "finished"
        elif isinstance(error, KeyboardInterrupt):
            status = "interrupted"  # resumable, like a killed run: not a failure of the run
        else:
            status = "failed"
        return {
            "status": status,
            "error": None if status != "failed" else str(error) or type(error).__name__,
            "warnings": list(self.warnings),
            "final_accuracy": accs[-1] if accs else None,
            "best_accuracy": max(accs) if accs else None,
            **self.final_evaluation(),
            "rounds": self.round,
            "wall_s": wall_s,
            "seed": c.seed,
            "strategy": c.strategy["name"],
            "trainer": c.trainer["name"],
            "model": c.model["name"],
            "hyperparameters": {  # the chosen plugins' fields (not the sub-tables of the others)
                key: {k: v for k, v in getattr(c, key).items() if not isinstance(v, dict)}
                for key in ("strategy", "trainer", "model")
            },
            "dataset": c.data.dataset,
            "partitioner": c.data.partitioner,
            "alpha": c.data.alpha,
            "label_ratio": c.data.label_ratio,
            "num_clients": c.data.num_clients,
            "backend": self.backend.name if self.backend is not None else c.engine.backend,
            "device": str(self.device),
            "threads": self.threads,
            **provenance(),
            "heterogeneity": self.heterogeneity(),
        }

    def final_evaluation(self) -> dict[str, Any]:
        """The last evaluated round's validation accuracy and client-accuracy distribution, where
        the run has those evaluation sets."""
        last = self.history.records[-1] if self.history.records else {}
        final: dict[str, Any] = {}
        if self.validation:
            final["final_val_accuracy"] = last.get("val_accuracy")
        if self.client_test_sets:
            final["final_client_accuracy"] = {
                c.removeprefix("client_accuracy_"): last.get(c) for c in DISTRIBUTION_COLUMNS
            }
        if self.personal:
            final["final_personal_accuracy"] = {
                c.removeprefix("personal_accuracy_"): last.get(c) for c in PERSONAL_COLUMNS
            }
        return final

    def heterogeneity(self) -> dict[str, float]:
        """How skewed the split is (`fedsim.data.partition.heterogeneity`): over every client of a
        fixed dataset, over the central test clients of a generated population."""
        _, counts, overall = self.population.label_counts()
        return heterogeneity(counts, overall, self.population.moved())
