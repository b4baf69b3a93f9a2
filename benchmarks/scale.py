"""Scale: set-up seconds, steady seconds per round and peak RSS as the population grows.

    python -m benchmarks.scale                                # N = 10^3 .. 10^7, FedAvg and SCAFFOLD, the state budget
    python -m benchmarks.scale --sizes 1000,10000 --rounds 3 --budget-clients 0   # a smoke test
    python -m benchmarks.scale --flower --sizes 1000,10000    # Flower 1.42's engine on the same workload

The workload: LEAF Synthetic(1, 1), a generated population of N clients (`fedsim.population`),
logistic regression (`model.hidden = []`), 1000 clients a round, 1 local epoch of batch 10 at
lr 0.01, the central test set of 1000 seeded clients' test shares scored every round, the
vectorized backend. Each (strategy, N) runs in a fresh process, so its peak RSS (the process's
high-water mark) is its own. Set-up: building the `Simulation` (sizes, model, test set) and
starting the backend, up to the first round; round: the median of the rounds after the first.

The state budget: SCAFFOLD at N = `--budget-clients` with a wider model (MLP 60-256-10, one c_i
= 72.7 KB) for `--budget-rounds` rounds, once with `engine.client_state_memory` = 1 GB (the
states beyond it spill to the run's segment files) and once unbounded; the final weights must be
equal bit for bit.

`--flower` runs the same workload on Flower 1.42's simulation engine (`benchmarks.flower_baseline`:
Flower's FedAvg, one CPU per ClientApp, each actor building the population once and making the
client a message names), each N under `--flower-limit` seconds, up from the smallest N until one
does not finish.

Results go to `benchmarks/results/scale.md` and `.json` (`--out` to change).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.concurrent_runs import cpu_name
from benchmarks.tables import publish
from benchmarks.workloads import SCALE_COHORT as COHORT
from benchmarks.workloads import SCALE_SIZES as SIZES
from benchmarks.workloads import scale_settings

ROOT = Path(__file__).resolve().parent.parent
MB = 1e6
BUDGET_BYTES = 1_000_000_000


def settings(num_clients: int, strategy: str, rounds: int, hidden: str = "[]", budget: int = 0) -> list[str]:
    """The workload's config overrides (see the module docstring), on the vectorized backend."""
    return [
        *scale_settings(num_clients, strategy, hidden, budget), f"train.rounds={rounds}",
        "engine.backend=vectorized", "engine.device=cpu",
    ]


def measure(overrides: list[str]) -> dict:
    """One run in this (fresh) process: set-up and round seconds, peak RSS, the store's sizes."""
    from fedsim.config import load_config
    from fedsim.engine import Callback, Simulation

    class Started(Callback):
        def on_run_start(self, sim) -> None:  # after the backend has started
            self.at = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        start, started = time.perf_counter(), Started()
        sim = Simulation(load_config(None, overrides), [started], state_dir=Path(tmp) / "client_states")
        sim.run()
        setup_s = started.at - start
        disk = sum(p.stat().st_size for p in (Path(tmp) / "client_states").glob("seg_*"))
        rounds = [r["round_s"] for r in sim.history.records]
        return {
            "setup_s": setup_s,
            "first_round_s": rounds[0],
            "round_s": statistics.median(rounds[1:]) if len(rounds) > 1 else rounds[0],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB,
            "participants": len(sim.client_states),
            "ram_state_mb": sim.client_states.resident_bytes / MB,
            "disk_state_mb": disk / MB,
            "final_accuracy": sim.history.records[-1]["test_accuracy"],
            "threads": sim.threads,
            "weights_sha256": hashlib.sha256(
                b"".join(sim.params[k].numpy().tobytes() for k in sorted(sim.params))
            ).hexdigest(),
        }


def in_fresh_process(overrides: list[str]) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, (overrides,))


def flower_row(num_clients: int, rounds: int, limit_s: float) -> dict:
    """Flower's engine on the workload, in a child process killed after `limit_s` seconds."""
    command = [sys.executable, "-m", "benchmarks.scale", "--flower-one", str(num_clients), "--rounds", str(rounds)]
    start = time.perf_counter()
    # a session of its own, so a run past its limit is killed with the Ray processes it started
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                             start_new_session=True)
    try:
        stdout, stderr = child.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        return {"num_clients": num_clients, "finished": False, "why": f"not done in {limit_s:.0f} s"}
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if child.returncode != 0 or not lines:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        return {"num_clients": num_clients, "finished": False, "why": f"exit {child.returncode}: {tail[:200]}"}
    return {"num_clients": num_clients, "finished": True, "total_s": time.perf_counter() - start, **json.loads(lines[-1])}


def flower_one(num_clients: int, rounds: int) -> dict:
    """Flower's run of the workload (this process and its actors): seconds per round, peak RSS."""
    from benchmarks import flower_baseline

    start = time.perf_counter()
    result = flower_baseline.run(f"synthetic{num_clients}", rounds, "cpu")
    ticks = result["ticks"]  # at each central evaluation: the initial model's, then each round's
    rounds_s = [b - a for a, b in zip(ticks, ticks[1:])]
    return {
        "setup_and_first_round_s": ticks[1] - start,  # the first round also starts the actors
        "round_s": statistics.median(rounds_s[1:] or rounds_s),
        "peak_rss_mb": result["peak_mb"],
        "final_accuracy": result["accuracy"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="population sizes, comma-separated")
    parser.add_argument("--strategies", default="fedavg,scaffold")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--budget-clients", type=int, default=10**6, help="N of the state-budget check; 0 = skip it")
    parser.add_argument("--budget-rounds", type=int, default=20)
    parser.add_argument("--flower", action="store_true", help="run Flower 1.42's engine instead")
    parser.add_argument("--flower-limit", type=float, default=600.0, help="seconds Flower gets per N")
    parser.add_argument("--flower-one", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    if args.flower_one:
        print(json.dumps(flower_one(args.flower_one, args.rounds)), flush=True)
        return
    machine = f"{cpu_name()} ({platform.machine()}), Python {platform.python_version()}"
    if args.flower:
        publish_flower(sizes, args, machine)
        return
    rows = []
    for strategy in args.strategies.split(","):
        for n in sizes:
            rows.append({"strategy": strategy, "num_clients": n, **in_fresh_process(settings(n, strategy, args.rounds))})
            print({k: v for k, v in rows[-1].items() if k != "weights_sha256"}, flush=True)
    budget = []
    if args.budget_clients:
        for name, limit in (("1 GB", BUDGET_BYTES), ("unbounded", 0)):
            overrides = settings(args.budget_clients, "scaffold", args.budget_rounds, "[256]", limit)
            budget.append({"budget": name, **in_fresh_process(overrides)})
            print({k: v for k, v in budget[-1].items() if k != "weights_sha256"}, flush=True)
    lines = [
        "# Scale: population size against set-up, round time and memory",
        "",
        f"`python -m benchmarks.scale --sizes {args.sizes} --rounds {args.rounds}` on {machine}, 2 cores: LEAF "
        f"Synthetic(1, 1) as a generated population of N clients, logistic regression, {COHORT} clients a round, "
        "1 local epoch of batch 10, the central test set (1000 seeded clients' test shares) scored every round, "
        f"vectorized backend, {rows[0]['threads'] if rows else '-'} torch thread(s). Each row is a fresh process. "
        "Set-up: building the Simulation and starting its backend; s / round: median of the rounds after the first. "
        "Accuracy stays near chance by the data's design: every Synthetic client labels with a softmax model of its own, "
        "so with thousands of clients no global model fits them (FedProx uses 30).",
        "",
        "| strategy | N | set-up (s) | first round (s) | s / round | rounds / s | peak RSS (MB) | participants | states in RAM (MB) | final accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['strategy']} | {r['num_clients']:,} | {r['setup_s']:.2f} | {r['first_round_s']:.2f} | {r['round_s']:.3f} "
        f"| {1 / r['round_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['participants']:,} | {r['ram_state_mb']:.1f} "
        f"| {r['final_accuracy']:.3f} |"
        for r in rows
    ]
    if budget:
        same = budget[0]["weights_sha256"] == budget[1]["weights_sha256"]
        lines += [
            "",
            f"State budget: SCAFFOLD, N = {args.budget_clients:,}, MLP 60-256-10, {args.budget_rounds} rounds of "
            f"{COHORT} clients; final weights of the two runs equal bit for bit: {'yes' if same else 'NO'}.",
            "",
            "| `engine.client_state_memory` | s / round | peak RSS (MB) | participants | states in RAM (MB) | states on disk (MB) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {b['budget']} | {b['round_s']:.3f} | {b['peak_rss_mb']:.0f} | {b['participants']:,} "
            f"| {b['ram_state_mb']:.0f} | {b['disk_state_mb']:.0f} |"
            for b in budget
        ]
    publish(lines, {"rows": rows, "budget": budget}, args.out or ROOT / "benchmarks" / "results" / "scale")


def publish_flower(sizes: list[int], args, machine: str) -> None:
    rows = []
    for n in sizes:
        rows.append(flower_row(n, args.rounds, args.flower_limit))
        print(rows[-1], flush=True)
        if not rows[-1]["finished"]:
            break
    lines = [
        "# Scale on Flower 1.42's simulation engine",
        "",
        f"`python -m benchmarks.scale --flower --sizes {args.sizes} --rounds {args.rounds}` on {machine}, 2 cores: the "
        "workload of `scale.md` (FedAvg) on `flwr.simulation.run_simulation` with N supernodes, Flower's FedAvg "
        f"sampling {COHORT} a round, `client_resources` of one CPU per ClientApp, each actor building the population "
        "once and making the client a message names (`benchmarks/flower_baseline.py`). Each N gets "
        f"{args.flower_limit:.0f} s; larger N are not tried once one does not finish.",
        "",
        "| N | finished | set-up + first round (s) | s / round | peak RSS (MB) | final accuracy |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["finished"]:
            lines.append(
                f"| {r['num_clients']:,} | yes | {r['setup_and_first_round_s']:.1f} | {r['round_s']:.2f} "
                f"| {r['peak_rss_mb']:.0f} | {r['final_accuracy']:.3f} |"
            )
        else:
            lines.append(f"| {r['num_clients']:,} | no: {r['why']} | - | - | - | - |")
    publish(lines, rows, args.out or ROOT / "benchmarks" / "results" / "scale_flower")


if __name__ == "__main__":
    main()
