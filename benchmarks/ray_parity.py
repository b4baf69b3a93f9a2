"""Every strategy and trainer added for the baselines, on Ray against serial: the largest
|difference| in the final weights (0 is bit for bit).

    python -m benchmarks.ray_parity        # writes benchmarks/results/ray_parity.md

The quickstart shrunk to 10 clients and 2 rounds, one torch thread, a local Ray session of 2
CPUs and 2 workers. The suite checks Ray for the built-in trainers, FedLD, SCAFFOLD and Krum
under attack; this covers the rest without adding their minutes to CI.
"""

from __future__ import annotations

import platform
from pathlib import Path

import ray

from benchmarks.concurrent_runs import cpu_name
from fedsim.config import load_config
from fedsim.engine import Simulation

ROOT = Path(__file__).resolve().parent.parent
CASES = [
    ["strategy.name=fedadam"], ["strategy.name=fedyogi", "strategy.variant=flwr"], ["strategy.name=fedadagrad"],
    ["strategy.name=fedmedian"], ["strategy.name=fedtrimmedavg"],
    ["strategy.name=krum", "strategy.num_malicious=1", "strategy.num_selected=3"],
    ["strategy.name=bulyan", "strategy.num_malicious=1"], ["strategy.name=fednova", "train.min_local_work=0.3"],
    ["strategy.name=feddyn"], ["strategy.name=dp_fedavg"], ["trainer.name=dp_sgd"],
]
SMALL = ["data.num_clients=10", "train.rounds=2", "train.local_epochs=1", "engine.device=cpu", "engine.threads=1"]


def final_params(overrides: list[str]):
    sim = Simulation(load_config(ROOT / "experiments" / "quickstart.toml", [*SMALL, *overrides]))
    sim.run()
    return sim.params


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    lines = ["# Ray against serial for the baselines", "",
             f"`python -m benchmarks.ray_parity` on {cpu_name()} ({platform.machine()}): quickstart, 10 clients, "
             "2 rounds, 2 Ray workers of 1 CPU.", "", "| settings | max abs difference of the final weights |", "|---|---:|"]
    try:
        for case in CASES:
            serial = final_params(case)
            on_ray = final_params([*case, "engine.backend=ray", "engine.workers=2", "engine.cpus_per_worker=1"])
            diff = max(float((on_ray[k] - serial[k]).abs().max()) for k in serial)
            lines.append(f"| `{' '.join(case)}` | {diff:.1e} |")
            print(lines[-1], flush=True)
    finally:
        ray.shutdown()
    text = "\n".join(lines) + "\n"
    (ROOT / "benchmarks" / "results" / "ray_parity.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
