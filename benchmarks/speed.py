"""Speed benchmark: fedsim's backends side by side with a plain PyTorch loop and Flower 1.42.

    python -m benchmarks.speed                                   # every runner, the CPU workloads
    python -m benchmarks.speed --workloads digits100 --runners vectorized,plain
    python -m benchmarks.speed --quick                           # 3 rounds each: a smoke test
    python -m benchmarks.speed --workloads cifar10_pfl --device cuda --runners vectorized,serial,flower

Runners: fedsim's backends (`vectorized`, `serial`, `ray`: one actor per CPU training client by
client, `ray_vectorized`: the same pool with `engine.worker_backend = "vectorized"`), `plain`
(the reference: a sequential FedAvg loop in plain PyTorch, `load_state_dict` + `torch.optim.SGD`
per client) and `flower` (Flower's simulation engine: FedAvg ServerApp + ClientApp, one CPU per
actor, the workload built once per actor, central `evaluate_fn`; `benchmarks/flower_baseline.py`).
All runners train the same clients (fedsim's partition indices), from the same initial model,
with the same local SGD, and evaluate centrally on the same test set after every round.

Each (workload, runner) runs in a fresh Python process, so its start-up and peak memory are its
own. Measured per run:
- steady-state seconds per round: the median round time excluding round 1 (a round is the time
  between two central evaluations, so it includes one evaluation; Flower's come from its
  `evaluate_fn` timestamps);
- start-up seconds: from the process's first line to the start of round 1 (imports, data,
  model, workers);
- clients per second: clients trained per round / steady seconds per round;
- peak memory: the sum of peak RSS (VmHWM) over the process and its live descendants (Ray's
  and Flower's workers), read from /proc after the last round: an upper bound, as pages shared
  between processes count once per process;
- final accuracy on the test set;
- for Flower, from its replies: train messages, actors, workload builds (one per actor) and the
  seconds its clients spent in their own work, summed per round; and its driver's CPU seconds
  per round.

The arithmetic floor of a workload is the FLOPs of one round's local training divided by the
machine's measured float32 matmul rate (2048 x 2048 `torch.mm`, the runners' threads). FLOPs count
forward + backward as 3x the forward's matmul/convolution FLOPs (torch's FlopCounterMode), times
the samples each cohort trains on per round (local epochs x client sizes).

Results go to `benchmarks/results/speed.json` and `speed.md` (`--out` to change).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START = time.perf_counter()

from benchmarks.workloads import (  # noqa: E402  (START first: start-up counts from the first line)
    CIFAR10_SHAPED,
    FEDSIM_RUNNERS,
    ROOT,
    WORKLOADS,
    Workload,
    accuracy,
    build_simulation,
    cpu_model,
    every_client,
    local_sgd,
    peak_rss_mb,
    write_cifar10_shaped,
)

RUNNERS = (*FEDSIM_RUNNERS, "plain", "flower")
QUICK_ROUNDS = 3
WORKER_TIMEOUT_S = 3600

__all__ = ["CIFAR10_SHAPED", "WORKLOADS", "Workload", "main", "write_cifar10_shaped"]


# --------------------------------------------------------------------------- runners (in a worker process)


def run_fedsim(workload: Workload, rounds: int, device: str, runner: str) -> dict:
    """fedsim's own round loop as `runner` (a FEDSIM_RUNNERS key); a callback times each round."""
    from fedsim.engine import Callback

    class Clock(Callback):
        def __init__(self) -> None:
            self.ticks: list[float] = []
            self.peak_mb = 0.0

        def on_run_start(self, sim) -> None:
            self.ticks.append(time.perf_counter())

        def on_round_end(self, sim, record) -> None:
            self.ticks.append(time.perf_counter())
            if record["round"] == rounds:
                self.peak_mb = peak_rss_mb()  # before the backend closes its workers

    clock = Clock()
    sim = build_simulation(workload, rounds, device, runner, [clock])
    summary = sim.run()
    cohort = len(sim.sample_clients(1))
    return result(clock.ticks, summary["final_accuracy"], clock.peak_mb, cohort)


def run_plain(workload: Workload, rounds: int, device: str) -> dict:
    """The reference: FedAvg as a plain sequential PyTorch loop over the sampled clients."""
    import numpy as np
    import torch

    sim = build_simulation(workload, rounds, device)
    t = sim.config.train
    clients = every_client(sim)
    model = sim.model
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(sim.config.seed)
    generator = torch.Generator().manual_seed(sim.config.seed)
    cohort = len(sim.sample_clients(1))
    ticks = [time.perf_counter()]
    for _ in range(rounds):
        total = {k: torch.zeros_like(v) for k, v in global_state.items()}
        weight = 0
        for cid in rng.choice(len(clients), size=cohort, replace=False):
            x, y = clients[cid]
            model.load_state_dict(global_state)
            local_sgd(
                model, x, y, epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr, generator=generator
            )
            for k, v in model.state_dict().items():
                total[k] += len(y) * v
            weight += len(y)
        global_state = {k: v / weight for k, v in total.items()}
        model.load_state_dict(global_state)
        final_accuracy = accuracy(model, sim.x_test, sim.y_test)
        ticks.append(time.perf_counter())
    return result(ticks, final_accuracy, peak_rss_mb(), cohort)


def run_flower(workload_name: str, rounds: int, device: str) -> dict:
    """Flower 1.42's simulation engine; its ClientApp lives in `benchmarks.flower_baseline`."""
    from benchmarks import flower_baseline

    run = flower_baseline.run(workload_name, rounds, device)
    return {**result(run.pop("ticks"), run.pop("accuracy"), run.pop("peak_mb"), run.pop("cohort")), **run}


def result(ticks: list[float], final_accuracy: float, peak_mb: float, cohort: int) -> dict:
    """A run's measurements from the time training starts (`ticks[0]`) and each round ends."""
    return {
        "startup_s": ticks[0] - START,
        "round_s": [b - a for a, b in itertools.pairwise(ticks)],
        "final_accuracy": final_accuracy,
        "peak_rss_mb": peak_mb,
        "cohort": cohort,
    }


def worker(runner: str, workload: str, rounds: int, device: str) -> dict:
    if runner == "plain":
        return run_plain(WORKLOADS[workload], rounds, device)
    if runner == "flower":
        return run_flower(workload, rounds, device)
    return run_fedsim(WORKLOADS[workload], rounds, device, runner)


# --------------------------------------------------------------------------- the driver


def matmul_gflops() -> float:
    """float32 matmul rate of this machine with the current torch threads (best of 10)."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = float("inf")
    for _ in range(10):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best / 1e9


def round_flops(workload: Workload, device: str) -> float:
    """FLOPs of one round's local training: 3x forward FLOPs x samples the expected cohort trains on."""
    from fedsim.backends.vectorized import forward_flops

    sim = build_simulation(workload, 1, device)
    t, n = sim.config.train, sim.config.data.num_clients
    x = sim.population.client(0, sim.device).x[:1]
    samples = t.local_epochs * int(sim.population.sizes.sum()) * len(sim.sample_clients(1)) / n
    return 3 * forward_flops(sim.model, x) * samples


def run_worker(runner: str, workload: str, rounds: int, device: str, threads: int) -> dict:
    """One (workload, runner) in a fresh process; its measurements, or the error it ended with."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "result.json"
        options = {"--worker": runner, "--workloads": workload, "--rounds": rounds, "--device": device,
                   "--threads": threads, "--result": path}  # fmt: skip
        command = [
            sys.executable,
            "-m",
            "benchmarks.speed",
            *(str(a) for item in options.items() for a in item),
        ]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        worker_process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, so a timeout also ends its Ray workers
        )
        try:
            _, stderr = worker_process.communicate(timeout=WORKER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(worker_process.pid, signal.SIGKILL)
            worker_process.wait()
            return {"error": f"no result within {WORKER_TIMEOUT_S} s"}
        if worker_process.returncode != 0 or not path.exists():
            return {"error": (stderr.strip().splitlines() or [f"exit code {worker_process.returncode}"])[-1]}
        return json.loads(path.read_text())


def summarize(run: dict) -> dict:
    """Steady-state seconds per round (median excluding round 1) and clients per second."""
    steady = statistics.median(run["round_s"][1:] or run["round_s"])
    return {**run, "steady_s": steady, "clients_per_s": run["cohort"] / steady}


def markdown(results: dict) -> str:
    machine = results["machine"]
    lines = [
        (
            f"Machine: {machine['cpus']} CPUs ({machine.get('cpu_model', 'model not recorded')}), "
            f"torch {machine['torch']} ({machine['threads']} threads), "
            f"matmul {machine['matmul_gflops']:.0f} GFLOP/s, device {machine['device']}"
            + (
                f", load average {machine['load_average_start']:.1f} at the start and "
                f"{machine['load_average_end']:.1f} at the end."
                if "load_average_end" in machine
                else "."
            )
        ),
        "",
    ]
    for name, w in results["workloads"].items():
        lines += [
            f"### {name}: {w['description']}, {w['rounds']} rounds",
            "",
            f"Arithmetic floor: {w['flops_per_round'] / 1e9:.3f} GFLOP per round = {w['floor_s'] * 1e3:.2f} ms per round.",
            "",
            "| runner | s/round (steady) | start-up s | clients/s | peak MB | final acc | x floor |",
            "|---|---|---|---|---|---|---|",
        ]
        for runner, r in w["runners"].items():
            if "error" in r:
                lines.append(f"| {runner} | failed: {r['error']} | | | | | |")
                continue
            lines.append(
                f"| {runner} | {r['steady_s']:.4f} | {r['startup_s']:.1f} | {r['clients_per_s']:.0f} | "
                f"{r['peak_rss_mb']:.0f} | {r['final_accuracy']:.3f} | {r['steady_s'] / w['floor_s']:.0f} |"
            )
        lines += ["", *speedups(w["runners"]), *flower_notes(w["runners"]), ""]
    return "\n".join(lines)


def speedups(runners: dict) -> list[str]:
    """Steady-state speed-up of the vectorized backend over each other runner."""
    base = runners.get("vectorized")
    if not base or "error" in base:
        return []
    return [
        f"vectorized is {r['steady_s'] / base['steady_s']:.1f}x faster than {name} per round (steady state)."
        for name, r in runners.items()
        if name != "vectorized" and "error" not in r
    ]


def flower_notes(runners: dict) -> list[str]:
    """What the Flower run's replies say: workload builds per actor, and the clients' share of a round."""
    run = runners.get("flower", {})
    if "flower" not in run:
        return []
    f = run["flower"]
    train_s = statistics.median(f["client_train_s"][1:] or f["client_train_s"])
    notes = [
        f"flower: {f['messages']} train messages on {f['actors']} actors, the workload built "
        f"{f['workload_builds']} times; its clients' own work (load_state_dict, local SGD, state_dict) "
        f"took {train_s:.4f} s of a {run['steady_s']:.4f} s round, summed over the actors "
        f"({train_s / run['cohort'] * 1e3:.2f} ms per client, {run['steady_s'] / run['cohort'] * 1e3:.2f} ms "
        "of round per client)."
    ]
    if f.get("driver_cpu_s"):
        cpu_s = statistics.median(f["driver_cpu_s"][1:] or f["driver_cpu_s"])
        notes.append(
            f"flower: its driver process (ServerApp, simulation engine, Ray submission) used {cpu_s:.4f} "
            f"CPU s a round ({cpu_s / run['cohort'] * 1e3:.2f} ms per client)."
        )
    return notes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workloads",
        default=",".join(name for name, w in WORKLOADS.items() if w.default),
        help=f"comma-separated: {', '.join(WORKLOADS)} (default: all but cifar10_pfl)",
    )
    parser.add_argument("--runners", default=",".join(RUNNERS), help=f"comma-separated: {', '.join(RUNNERS)}")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds per workload (a smoke test)"
    )
    parser.add_argument("--rounds", type=int, default=0, help="override every workload's round count")
    parser.add_argument("--device", default="cpu", help="device of fedsim and the plain loop (cpu, cuda)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads of every runner (0: torch's default)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        args.result.write_text(json.dumps(worker(args.worker, args.workloads, args.rounds, args.device)))
        return

    workloads, runners = args.workloads.split(","), args.runners.split(",")
    for runner in runners:
        if runner not in RUNNERS:
            parser.error(f"unknown runner '{runner}': choose from {', '.join(RUNNERS)}")
    for name in workloads:
        if name not in WORKLOADS:
            parser.error(f"unknown workload '{name}': choose from {', '.join(WORKLOADS)}")
    gflops = matmul_gflops()
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model(),
            "load_average_start": os.getloadavg()[0],
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "matmul_gflops": gflops,
            "device": args.device,
        },
        "workloads": {},
    }
    for name in workloads:
        workload = WORKLOADS[name]
        if workload.prepare is not None:
            workload.prepare()
        rounds = args.rounds or (QUICK_ROUNDS if args.quick else workload.rounds)
        flops = round_flops(workload, args.device)
        entry = {
            "description": workload.description,
            "rounds": rounds,
            "flops_per_round": flops,
            "floor_s": flops / (gflops * 1e9),
            "runners": {},
        }
        for runner in runners:
            print(f"{name}: {runner} ...", file=sys.stderr, flush=True)
            run = run_worker(runner, name, rounds, args.device, args.threads)
            entry["runners"][runner] = run if "error" in run else summarize(run)
        results["workloads"][name] = entry
        results["machine"]["load_average_end"] = os.getloadavg()[0]
        write(results, args.out)  # after every workload, so a long run keeps what it measured
    print(markdown(results))


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(results, indent=2))
    (out / "speed.md").write_text(markdown(results) + "\n")


if __name__ == "__main__":
    main()
