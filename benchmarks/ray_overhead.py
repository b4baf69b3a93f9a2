"""Engine overhead per client-round of fedsim's round loop and of its Ray backend.

    python -m benchmarks.ray_overhead                      # digits MLP, 100 clients, 1 local step
    python -m benchmarks.ray_overhead --clients 1000 --rounds 8
    python -m benchmarks.ray_overhead --address HOST:PORT  # the Ray pools join an existing cluster

Method. One workload (digits, MLP 64-128-10, Dirichlet 0.5, all clients every round, batch 32,
one local step per client, so training is as small as it gets) is driven round by round through
the engine's own steps, each timed:

    plan = sim.plan_round(r)             # sample the cohort, gather client states
    output = backend.run_round(plan)     # local training (+ transport on Ray)
    sim.apply_round(plan, output)        # reduce, server update

Each round's plan is run on the `serial` backend and on a Ray pool, one right after the other
(paired, so a change in machine load hits both), and the two outputs are checked bit-identical.
The driver runs torch with one thread, like a worker with one CPU, so serial and a one-worker
pool do the same arithmetic in one process each. Medians over rounds 2.. (round 1 warms up):

- engine overhead per client-round = (plan + apply) / clients: the round loop's own cost around
  training (evaluation is left out: it is per round, not per client);
- Ray overhead per client-round = (Ray run_round - serial run_round) / clients, one worker: the
  plan's put, scheduling, each worker's partial sum shipped back, deserialization, the merge.

Flower's cost per client-round on the same kind of workload is in the speed benchmark's results
(`benchmarks/results/speed.md`, the `flower` runner's notes). Results go to
`benchmarks/results/ray_overhead.json` and `.md`, with the machine's CPU model and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from benchmarks.workloads import cpu_model

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = (
    "data.dataset=digits", "data.partitioner=dirichlet", "data.alpha=0.5", "data.min_partition_size=1",
    "model.name=mlp", "model.hidden=[128]", "train.lr=0.05", "train.batch_size=32", "train.local_steps=1",
    "train.fraction=1.0", "strategy.name=fedavg", "engine.device=cpu",
)


def paired_rounds(clients: int, rounds: int, workers: int, address: str) -> dict:
    """Rounds run on serial and on a `workers`-actor Ray pool in turn; steady-state medians."""
    import torch

    from fedsim.backends import make_backend
    from fedsim.config import EngineConfig, load_config
    from fedsim.engine import Simulation

    sim = Simulation(load_config(None, [*WORKLOAD, f"data.num_clients={clients}", f"train.rounds={rounds}"]))
    serial = make_backend("serial", sim.task)
    start = time.perf_counter()
    pool = make_backend("ray", sim.task, EngineConfig(backend="ray", workers=workers, ray_address=address))
    startup_s = time.perf_counter() - start
    times: dict[str, list[float]] = {"plan_s": [], "serial_s": [], "ray_s": [], "apply_s": []}
    identical = True
    try:
        for round_ in range(1, rounds + 1):
            t0 = time.perf_counter()
            plan = sim.plan_round(round_)
            t1 = time.perf_counter()
            expected = serial.run_round(plan)
            t2 = time.perf_counter()
            got = pool.run_round(plan)
            t3 = time.perf_counter()
            sim.apply_round(plan, expected)
            t4 = time.perf_counter()
            for key, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times[key].append(seconds)
            means, reference = got.total.means(), expected.total.means()
            identical &= all(torch.equal(means["delta"][k], v) for k, v in reference["delta"].items())
    finally:
        pool.close()
    steady = {key: statistics.median(values[1:]) for key, values in times.items()}
    overhead = statistics.median(r - s for r, s in zip(times["ray_s"][1:], times["serial_s"][1:]))
    return {"workers": workers, "startup_s": startup_s, **steady, "ray_minus_serial_s": overhead,
            "cohort": len(plan.client_ids), "identical": identical}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--address", default="", help="join this Ray cluster instead of starting a local one")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # the arithmetic of a one-CPU Ray worker
    runs = [paired_rounds(args.clients, args.rounds, workers, args.address) for workers in (1, 2)]
    one = runs[0]
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model(),
            "load_average": os.getloadavg()[0],
            "torch": torch.__version__,
        },
        "clients": args.clients,
        "rounds": args.rounds,
        "runs": runs,
        "engine_overhead_ms_per_client_round": (one["plan_s"] + one["apply_s"]) / one["cohort"] * 1e3,
        "ray_overhead_ms_per_client_round": one["ray_minus_serial_s"] / one["cohort"] * 1e3,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ray_overhead.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (args.out / "ray_overhead.md").write_text(table + "\n")
    print(table)


def markdown(results: dict) -> str:
    machine = results["machine"]
    lines = [
        f"`python -m benchmarks.ray_overhead --clients {results['clients']} --rounds {results['rounds']}`: "
        f"digits MLP 64-128-10, one local step per client, all clients every round; {machine['cpus']} CPUs "
        f"({machine.get('cpu_model', 'model not recorded')}), "
        f"load average {machine['load_average']:.1f}, torch {machine['torch']} (1 thread in the driver).",
        "",
        "| Ray workers | pool start-up s | plan ms | serial round ms | Ray round ms | apply ms | clients "
        "| bit-identical |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        ms = {key: f"{r[key] * 1e3:.2f}" for key in ("plan_s", "serial_s", "ray_s", "apply_s")}
        lines.append(
            f"| {r['workers']} | {r['startup_s']:.2f} | {ms['plan_s']} | {ms['serial_s']} | {ms['ray_s']} | "
            f"{ms['apply_s']} | {r['cohort']} | {'yes' if r['identical'] else 'NO'} |"
        )
    lines += [
        "",
        f"Engine overhead (plan + apply): {results['engine_overhead_ms_per_client_round']:.3f} ms "
        "per client-round.",
        f"Ray overhead (1-worker Ray round minus serial round, paired): "
        f"{results['ray_overhead_ms_per_client_round']:.3f} ms per client-round.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
