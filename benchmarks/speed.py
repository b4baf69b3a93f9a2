"""Speed benchmark: fedsim's backends side by side with a plain PyTorch loop and Flower 1.42.

    python -m benchmarks.speed                                   # every runner, the CPU workloads
    python -m benchmarks.speed --workloads digits100 --runners vectorized,plain
    python -m benchmarks.speed --quick                           # 3 rounds each: a smoke test
    python -m benchmarks.speed --workloads cifar10_pfl --device cuda --runners vectorized,serial,flower

Runners: fedsim's backends (`vectorized`, `serial`, `ray`: one actor per CPU training client by
client, `ray_vectorized`: the same pool with `engine.worker_backend = "vectorized"`), `plain`
(the reference: a sequential FedAvg loop in plain PyTorch, `load_state_dict` + `torch.optim.SGD`
per client) and `flower` (Flower's simulation engine: FedAvg ServerApp + ClientApp, one CPU per
actor, partitions cached per actor, central `evaluate_fn`). All runners train the same clients
(fedsim's partition indices), from the same initial model, with the same local SGD, and evaluate
centrally on the same test set after every round.

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
- final accuracy on the test set.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

START = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
FEDSIM_RUNNERS = {  # runner -> its [engine] settings
    "vectorized": ("engine.backend=vectorized",),
    "serial": ("engine.backend=serial",),
    "ray": ("engine.backend=ray",),
    "ray_vectorized": ("engine.backend=ray", "engine.worker_backend=vectorized"),
}
RUNNERS = (*FEDSIM_RUNNERS, "plain", "flower")
QUICK_ROUNDS = 3
WORKER_TIMEOUT_S = 3600


@dataclass(frozen=True)
class Workload:
    """An FL task every runner trains: fedsim config settings plus a round count.

    `prepare` (if any) makes the workload's data before its runners start; a workload that is
    not `default` runs only when named (`--workloads`).
    """

    description: str
    rounds: int
    settings: tuple[str, ...]
    prepare: Callable[[], None] | None = None
    default: bool = True


CIFAR10_SHAPED = ROOT / "benchmarks" / "data" / "cifar10_shaped"  # git-ignored; made on first use
CIFAR10_SHAPED_SIZES = {"train": 50_000, "test": 1_000}


def write_cifar10_shaped(path: Path = CIFAR10_SHAPED, sizes: dict[str, int] = CIFAR10_SHAPED_SIZES) -> None:
    """Random uint8 32x32x3 images with 10 labels, saved as a Hugging Face DatasetDict (once).

    The shape of CIFAR-10's training set, for timing only (it trains to chance accuracy). It is
    read back through fedsim's real loader (`data.dataset = "hf:cifar10"`, `data.path`), as a
    local copy of CIFAR-10 would be; the test split is small so evaluation stays cheap.
    """
    if (path / "dataset_dict.json").exists():
        return
    import datasets
    import numpy as np

    rng = np.random.default_rng(0)
    features = datasets.Features(
        {"img": datasets.Array3D((32, 32, 3), "uint8"), "label": datasets.ClassLabel(num_classes=10)}
    )
    splits = {
        split: datasets.Dataset.from_dict(
            {"img": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), "label": rng.integers(0, 10, n)},
            features=features,
        )
        for split, n in sizes.items()
    }
    datasets.DatasetDict(splits).save_to_disk(str(path))


DIGITS_MLP = (
    "data.dataset=digits",
    "data.partitioner=dirichlet",
    "data.alpha=0.5",
    "model.name=mlp",
    "model.hidden=[128]",
    "train.lr=0.05",
    "train.batch_size=32",
    "train.local_epochs=2",
    "train.fraction=1.0",
    "strategy.name=fedavg",
)
WORKLOADS = {
    "digits10": Workload(
        "digits, MLP 64-128-10, 10 clients, all per round", 10, (*DIGITS_MLP, "data.num_clients=10")
    ),
    "digits100": Workload(
        "digits, MLP 64-128-10, 100 clients, all per round", 20, (*DIGITS_MLP, "data.num_clients=100")
    ),
    "digits1000": Workload(
        "digits, MLP 64-128-10, 1000 clients (1-3 samples each), all per round",
        5,
        (*DIGITS_MLP, "data.num_clients=1000", "data.min_partition_size=1"),
    ),
    "mnist1d_cnn": Workload(
        "mnist1d, CNN (32, 64 channels), 100 clients, 10 per round, 5 local epochs",
        10,
        (
            "data.dataset=mnist1d",
            "data.partitioner=dirichlet",
            "data.alpha=0.5",
            "data.num_clients=100",
            "model.name=cnn",
            "model.channels=[32,64]",
            "train.lr=0.05",
            "train.batch_size=32",
            "train.local_epochs=5",
            "train.fraction=0.1",
            "strategy.name=fedavg",
        ),
    ),
    "cifar10_pfl": Workload(
        "pfl-research CIFAR-10 shape: 1000 clients x 50 CIFAR-10-shaped random images, 50 per round, "
        "batch 10, 1 local epoch, CNN (32, 64 channels)",
        10,
        (
            "data.dataset=hf:cifar10",
            f"data.path={CIFAR10_SHAPED}",
            "data.partitioner=iid",
            "data.num_clients=1000",
            "model.name=cnn",
            "model.channels=[32,64]",
            "train.lr=0.05",
            "train.batch_size=10",
            "train.local_epochs=1",
            "train.fraction=0.05",
            "strategy.name=fedavg",
        ),
        prepare=write_cifar10_shaped,
        default=False,  # a GPU workload: `--workloads cifar10_pfl --device cuda`
    ),
}


# --------------------------------------------------------------------------- shared pieces


def build_simulation(workload: Workload, rounds: int, device: str, runner: str = "serial", callbacks=()):
    """The fedsim Simulation of a workload: every runner takes its data, partition and model from it."""
    from fedsim.config import load_config
    from fedsim.engine import Simulation

    settings = [
        *workload.settings,
        f"train.rounds={rounds}",
        f"engine.device={device}",
        *FEDSIM_RUNNERS[runner],
    ]
    return Simulation(load_config(None, settings), list(callbacks))


def peak_rss_mb() -> float:
    """Sum of VmHWM (peak RSS) over this process and its live descendants, in MiB."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total_kb, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        todo.extend(parents.get(pid, []))
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total_kb += next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")), 0
        )
    return total_kb / 1024


def local_sgd(model, x, y, *, epochs: int, batch_size: int, lr: float, generator=None) -> None:
    """Plain local training: `epochs` shuffled passes of SGD on cross-entropy."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=generator).split(batch_size):
            optimizer.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()


def accuracy(model, x, y) -> float:
    import torch

    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


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
    clients = [(x.to(sim.device), y.to(sim.device)) for x, y in sim.task.client_data]
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


_ACTOR_DATA: dict = {}  # a Flower actor's copy of the workload: (model, client data)


def actor_data(workload: Workload, rounds: int, device: str):
    """The workload's model and client data, built once per Flower actor process."""
    if not _ACTOR_DATA:
        import torch

        torch.set_num_threads(1)  # one CPU per actor (client_resources num_cpus = 1)
        sim = build_simulation(workload, rounds, device)
        _ACTOR_DATA["data"] = (
            sim.model,
            [(x.to(sim.device), y.to(sim.device)) for x, y in sim.task.client_data],
        )
    return _ACTOR_DATA["data"]


def run_flower(workload: Workload, rounds: int, device: str) -> dict:
    """Flower 1.42's simulation engine (`run_simulation`), FedAvg with a central evaluate_fn."""
    import logging

    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.ERROR)
    sim = build_simulation(workload, rounds, device)
    t = sim.config.train
    num_clients, cohort = sim.config.data.num_clients, len(sim.sample_clients(1))
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        model, data = actor_data(workload, rounds, device)
        x, y = data[context.node_config["partition-id"]]
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        local_sgd(model, x, y, epochs=t.local_epochs, batch_size=t.batch_size, lr=msg.content["config"]["lr"])
        reply = {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": len(y)})}
        return Message(RecordDict(reply), reply_to=msg)

    ticks: list[float] = []
    scores = {"accuracy": 0.0, "peak_mb": 0.0}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        sim.model.load_state_dict(arrays.to_torch_state_dict())
        scores["accuracy"] = accuracy(sim.model, sim.x_test, sim.y_test)
        ticks.append(time.perf_counter())
        if server_round == rounds:
            scores["peak_mb"] = peak_rss_mb()  # before the simulation shuts its actors down
        return MetricRecord({"accuracy": scores["accuracy"]})

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=t.fraction,
            fraction_evaluate=0.0,
            min_train_nodes=cohort,
            min_available_nodes=num_clients,
        )
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(sim.model.state_dict()),
            num_rounds=rounds,
            train_config=ConfigRecord({"lr": t.lr}),
            evaluate_fn=evaluate,
        )

    resources = {"num_cpus": 1, "num_gpus": 0.25 if sim.device.type == "cuda" else 0.0}
    backend_config = {
        "client_resources": resources,
        "init_args": {"logging_level": "ERROR", "log_to_driver": False},
    }
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_clients,
        backend_config=backend_config,
    )
    return result(ticks, scores["accuracy"], scores["peak_mb"], cohort)


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
        return run_flower(WORKLOADS[workload], rounds, device)
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
    x = sim.task.client_data[0][0][:1].to(sim.device)
    samples = t.local_epochs * sum(len(y) for _, y in sim.task.client_data) * len(sim.sample_clients(1)) / n
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
            f"Machine: {machine['cpus']} CPUs, torch {machine['torch']} ({machine['threads']} threads), "
            f"matmul {machine['matmul_gflops']:.0f} GFLOP/s, device {machine['device']}."
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
        lines += ["", *speedups(w["runners"]), ""]
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
        write(results, args.out)  # after every workload, so a long run keeps what it measured
    print(markdown(results))


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(results, indent=2))
    (out / "speed.md").write_text(markdown(results) + "\n")


if __name__ == "__main__":
    main()
