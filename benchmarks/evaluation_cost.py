"""What federated evaluation costs a round: its share of the round time.

    python -m benchmarks.evaluation_cost                 # 100 and 1000 clients, serial and vectorized
    python -m benchmarks.evaluation_cost --rounds 3      # a smoke test

The quickstart (digits MLP; synthetic LEAF data for 1000 clients, which digits cannot fill)
with `data.client_test_fraction = 0.2` and every client evaluated every round, with FedAvg (the
global model scored on every client) and with Ditto (also every client's personal model, in
vmapped chunks): the round's wall time including federated evaluation, the evaluation's time
(measured around it in the same round) and its share. Results go to `benchmarks/results/evaluation_cost.md` and `.json`.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from benchmarks.concurrent_runs import cpu_name
from benchmarks.tables import publish
from fedsim.config import load_config
from fedsim.engine import Simulation

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"backprop": "global", "ditto": "global + personal (Ditto)"}
QUICKSTART = ROOT / "experiments" / "quickstart.toml"


def workload(clients: int) -> list[str]:
    base = [f"data.num_clients={clients}", "engine.device=cpu", "train.local_epochs=1", "train.fraction=0.1",
            "data.client_test_fraction=0.2"]
    if clients > 100:
        base += ["data.dataset=synthetic", "data.partitioner=natural", "data.samples=60000"]
    return base


def seconds(overrides: list[str], rounds: int) -> tuple[float, float]:
    """Median (round seconds with evaluation, evaluation seconds) over rounds after the first.

    A record's `round_s` is taken before federated evaluation runs, so the evaluation is added."""
    sim = Simulation(load_config(QUICKSTART, [*overrides, f"train.rounds={rounds}"]))
    evaluation: list[float] = []
    measure = sim.evaluation_metrics

    def timed():
        start = time.perf_counter()
        metrics = measure()
        evaluation.append(time.perf_counter() - start)
        return metrics

    sim.evaluation_metrics = timed
    sim.run()
    rounds_s = [r["round_s"] + e for r, e in zip(sim.history.records, evaluation)][1:]
    return statistics.median(rounds_s), statistics.median(evaluation[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "evaluation_cost")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for clients in (100, 1000):
        for trainer in ("backprop", "ditto"):
            for backend in ("serial", "vectorized"):
                overrides = [*workload(clients), f"engine.backend={backend}", "engine.threads=1",
                             f"trainer.name={trainer}"]
                round_s, eval_s = seconds(overrides, args.rounds)
                rows.append({"clients": clients, "models": MODELS[trainer], "backend": backend, "round_s": round_s,
                             "evaluation_s": eval_s, "share": eval_s / round_s})
                print(rows[-1], flush=True)
    lines = [
        "# The cost of federated evaluation",
        "",
        f"`python -m benchmarks.evaluation_cost --rounds {args.rounds}` on {cpu_name()} ({platform.machine()}), 1 torch thread: "
        "10% of clients train a round (1 local epoch); every client's local test data (20% of its partition) "
        "is scored every round (the global model, and with Ditto each client's personal model too). Median over rounds after the first. 100 clients: digits MLP; 1000 clients: "
        "LEAF synthetic(1, 1), natural split, same MLP.",
        "",
        "| clients | models scored | backend | round (s) | federated evaluation (s) | share of the round |",
        "|---:|---|---|---:|---:|---:|",
    ]
    lines += [f"| {r['clients']} | {r['models']} | {r['backend']} | {r['round_s']:.4f} | {r['evaluation_s']:.4f} | "
              f"{r['share']:.1%} |" for r in rows]
    publish(lines, rows, args.out)


if __name__ == "__main__":
    main()
