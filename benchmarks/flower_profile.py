"""Where a Flower client's time goes: the speed benchmark's Flower client, stage by stage, alone.

    python -m benchmarks.flower_profile                        # digits100: 100 clients, one round each
    python -m benchmarks.flower_profile --workload digits1000

The `flower` runner of `benchmarks.speed` reports the seconds its clients spend in their own work
(unpack the global model from the message's ArrayRecord, local SGD, pack the reply's
ArrayRecord), measured inside the Ray actors while Flower's driver and Ray run beside them. This
script runs the same three stages for every client of the workload once, with one torch thread
(a Flower actor's), in a single process with nothing else of Flower running, next to the plain
loop's work for the same client (`load_state_dict` of a state dict + the same local SGD +
`state_dict`). Medians over three passes of all clients, in ms per client, wall and CPU time.
The difference between these and the speed benchmark's in-actor figure is what running beside
Flower's driver and Ray costs the clients; the rest of a Flower round is its message path.

Results go to `benchmarks/results/flower_profile.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from benchmarks.workloads import ROOT, WORKLOADS, build_simulation, cpu_model, every_client, local_sgd

PASSES = 3


def profile(workload: str) -> dict:
    import torch
    from flwr.app import ArrayRecord

    torch.set_num_threads(1)
    sim = build_simulation(WORKLOADS[workload], 1, "cpu")
    t, model = sim.config.train, sim.model
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    message_arrays = ArrayRecord(global_state)
    stages: dict[str, list[float]] = {
        "flower_unpack": [], "flower_sgd": [], "flower_pack": [], "plain_load": [], "plain_sgd": [],
        "plain_state_dict": [], "flower_cpu": [], "plain_cpu": [],
    }  # fmt: skip
    for _ in range(PASSES):
        sums = dict.fromkeys(stages, 0.0)
        for x, y in every_client(sim):
            c0, t0 = time.process_time(), time.perf_counter()
            model.load_state_dict(message_arrays.to_torch_state_dict())
            t1 = time.perf_counter()
            local_sgd(model, x, y, epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr)
            t2 = time.perf_counter()
            ArrayRecord(model.state_dict())
            t3, c3 = time.perf_counter(), time.process_time()
            model.load_state_dict(global_state)
            t4 = time.perf_counter()
            local_sgd(model, x, y, epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr)
            t5 = time.perf_counter()
            {k: v.detach().clone() for k, v in model.state_dict().items()}
            t6, c6 = time.perf_counter(), time.process_time()
            seconds = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, c3 - c0, c6 - c3)
            for key, value in zip(stages, seconds):
                sums[key] += value
        for key, total in sums.items():
            stages[key].append(total)
    clients = len(sim.population)
    ms = {key: statistics.median(values) / clients * 1e3 for key, values in stages.items()}
    return {"workload": workload, "clients": clients, "ms_per_client": ms}


def markdown(results: dict) -> str:
    ms, m = results["ms_per_client"], results["machine"]
    flower = ms["flower_unpack"] + ms["flower_sgd"] + ms["flower_pack"]
    plain = ms["plain_load"] + ms["plain_sgd"] + ms["plain_state_dict"]
    return "\n".join(
        [
            f"`python -m benchmarks.flower_profile --workload {results['workload']}`: "
            f"{WORKLOADS[results['workload']].description}; every client once, median of {PASSES} passes; "
            f"{m['cpus']} CPUs ({m['cpu_model']}), load average {m['load_average']:.1f}, torch {m['torch']} "
            "(1 thread), flwr " + m["flwr"] + ".",
            "",
            "| stage | Flower client (ArrayRecord in and out) ms | plain loop (state dicts) ms |",
            "|---|---|---|",
            f"| unpack the global model | {ms['flower_unpack']:.3f} | {ms['plain_load']:.3f} |",
            f"| local SGD | {ms['flower_sgd']:.3f} | {ms['plain_sgd']:.3f} |",
            f"| pack the upload | {ms['flower_pack']:.3f} | {ms['plain_state_dict']:.3f} |",
            f"| total (wall) | {flower:.3f} | {plain:.3f} |",
            f"| total (CPU time) | {ms['flower_cpu']:.3f} | {ms['plain_cpu']:.3f} |",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="digits100", choices=list(WORKLOADS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    from importlib.metadata import version

    import torch

    results = profile(args.workload)
    results["machine"] = {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "load_average": os.getloadavg()[0],
        "torch": torch.__version__,
        "flwr": version("flwr"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flower_profile.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (args.out / "flower_profile.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
