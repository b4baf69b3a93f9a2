"""Flower parity and speed: one fedsim experiment on the `serial` backend and on Flower's engine.

For each strategy the experiment runs on both engines with the same seed, and the script reports
- parity: the largest |w_flower - w_serial| over all final weights, and each run's final accuracy;
- speed: steady-state seconds per round (the median of rounds 2..R; round 1 also pays the client
  processes' one-time setup), Flower's overhead per client-round against serial, and Flower's
  start-up and shutdown (the whole call's wall time less the rounds').

    python -m benchmarks.flower_parity                         # quickstart: 20 clients, 30 rounds
    python -m benchmarks.flower_parity --set train.rounds=3    # a quick check

Writes benchmarks/results/flower_parity.json and .md (`--out` for another folder).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

from fedsim.config import load_config
from fedsim.engine import Simulation

ROOT = Path(__file__).resolve().parents[1]


def steady_round_s(sim: Simulation) -> float:
    """Median seconds per round after the first (all rounds when there is only one)."""
    times = [r["round_s"] for r in sim.history.records]
    return statistics.median(times[1:] or times)


def run_engine(config_path: Path, overrides: list[str], backend: str) -> tuple[Simulation, float]:
    """Run the experiment on `backend`; returns the finished simulation and the whole call's wall time."""
    sim = Simulation(load_config(config_path, [*overrides, f"engine.backend={backend}"]))
    start = time.perf_counter()
    sim.run()
    return sim, time.perf_counter() - start


def compare(config_path: Path, overrides: list[str], strategy: str) -> dict:
    overrides = [*overrides, f"strategy.name={strategy}"]
    serial, serial_wall = run_engine(config_path, overrides, "serial")
    flower, flower_wall = run_engine(config_path, overrides, "flower")
    config = serial.config
    clients_per_round = statistics.mean(r["num_clients"] for r in serial.history.records)
    rounds_s = sum(r["round_s"] for r in flower.history.records)
    max_diff = max(float((flower.params[k] - serial.params[k]).abs().max()) for k in serial.params)
    return {
        "strategy": strategy,
        "dataset": config.data.dataset,
        "num_clients": config.data.num_clients,
        "clients_per_round": clients_per_round,
        "rounds": config.train.rounds,
        "max_abs_weight_diff": max_diff,
        "same_accuracy_every_round": flower.history.accuracies() == serial.history.accuracies(),
        "serial": {
            "final_accuracy": serial.history.accuracies()[-1],
            "steady_s_per_round": steady_round_s(serial),
            "wall_s": serial_wall,
        },
        "flower": {
            "final_accuracy": flower.history.accuracies()[-1],
            "steady_s_per_round": steady_round_s(flower),
            "wall_s": flower_wall,
            "startup_and_shutdown_s": flower_wall - rounds_s,
        },
        "flower_overhead_ms_per_client_round": (
            1000 * (steady_round_s(flower) - steady_round_s(serial)) / clients_per_round
        ),
    }


def conditions() -> dict:
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg()[0],
        "flwr": version("flwr"),
        "ray": version("ray"),
        "torch": torch.__version__,
    }


def markdown(report: dict) -> str:
    c = report["conditions"]
    lines = [
        "# fedsim on Flower: parity and speed",
        "",
        f"`{report['command']}`",
        "",
        f"{c['cpus']} CPUs, load average {c['load_average_at_start']:.1f} at start, flwr {c['flwr']}, "
        f"ray {c['ray']}, torch {c['torch']}; Flower: `run_simulation`, Ray backend, 1 CPU per client actor.",
        "",
        "| strategy | clients/round | rounds | max abs weight diff | accuracy serial / flower | "
        "s/round serial | s/round flower | flower overhead ms per client-round | flower start+stop s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        s, f = r["serial"], r["flower"]
        lines.append(
            f"| {r['strategy']} | {r['clients_per_round']:g} | {r['rounds']} | "
            f"{r['max_abs_weight_diff']:.2e} | "
            f"{s['final_accuracy']:.4f} / {f['final_accuracy']:.4f} | {s['steady_s_per_round']:.3f} | "
            f"{f['steady_s_per_round']:.3f} | {r['flower_overhead_ms_per_client_round']:.1f} | "
            f"{f['startup_and_shutdown_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "quickstart.toml")
    parser.add_argument("--strategies", nargs="+", default=["fedavg", "scaffold"])
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="a fedsim override, repeatable"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    overrides = ["engine.device=cpu", *args.overrides]
    report = {
        "command": shlex.join(["python", "-m", "benchmarks.flower_parity", *sys.argv[1:]]),
        "conditions": conditions(),
        "results": [compare(args.config, overrides, strategy) for strategy in args.strategies],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flower_parity.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / "flower_parity.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
