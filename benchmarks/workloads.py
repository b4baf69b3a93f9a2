"""The speed benchmark's workloads and the pieces every runner shares, importable by name.

`benchmarks.speed` (the driver, run as `__main__`) and `benchmarks.flower_baseline` (the Flower
runner, whose functions Ray workers import) both take their workloads from here, so a worker
process imports this module once instead of receiving copies of it with every message.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FEDSIM_RUNNERS = {  # runner -> its [engine] settings
    "vectorized": ("engine.backend=vectorized",),
    "serial": ("engine.backend=serial",),
    "ray": ("engine.backend=ray",),
    "ray_vectorized": ("engine.backend=ray", "engine.worker_backend=vectorized"),
}


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


FEMNIST_SHAPED = ROOT / "benchmarks" / "data" / "femnist_shaped"  # git-ignored; made on first use
FEMNIST_WRITERS = 1000  # LEAF has ~3,550; loading 3,500 writers' 800k images peaks near 20 GB in today's eager data path
LEAF_FEMNIST_SIZES = (226.83, 88.94)  # samples per writer, mean and std (LEAF, Caldas et al. 2018, Table 1)


def write_femnist_shaped(path: Path = FEMNIST_SHAPED, writers: int = FEMNIST_WRITERS) -> None:
    """Random 28x28 greyscale images of 62 classes by writer, in flwrlabs/femnist's columns (once).

    Writers' sample counts are lognormal with LEAF's FEMNIST mean and std (at least 10), so the
    cohort's work varies as on the real data; for timing only (it trains to chance accuracy). The
    pixels are stored as uint8 arrays rather than PNG images so writing ~800k of them takes
    seconds; fedsim's femnist loader reads either.
    """
    if (path / "dataset_dict.json").exists():
        return
    import datasets
    import numpy as np

    rng = np.random.default_rng(0)
    mean, std = LEAF_FEMNIST_SIZES
    sigma2 = np.log(1 + (std / mean) ** 2)
    sizes = np.maximum(np.rint(rng.lognormal(np.log(mean) - sigma2 / 2, np.sqrt(sigma2), writers)), 10).astype(int)
    n = int(sizes.sum())
    features = datasets.Features({
        "image": datasets.Array2D((28, 28), "uint8"),
        "writer_id": datasets.Value("string"),
        "hsf_id": datasets.Value("int64"),
        "character": datasets.ClassLabel(num_classes=62),
    })
    columns = {
        "image": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        "writer_id": np.repeat([f"f{w:04d}_{w % 100:02d}" for w in range(writers)], sizes),
        "hsf_id": np.repeat(rng.integers(0, 8, writers), sizes),
        "character": rng.integers(0, 62, n),
    }
    datasets.DatasetDict(train=datasets.Dataset.from_dict(columns, features=features)).save_to_disk(str(path))


SCALE_COHORT = 1000
SCALE_SIZES = (10**3, 10**4, 10**5, 10**6, 10**7)


def scale_settings(num_clients: int, strategy: str = "fedavg", hidden: str = "[]", budget: int = 0) -> tuple[str, ...]:
    """`benchmarks.scale`'s workload: LEAF Synthetic(1, 1) generated for `num_clients` clients,
    logistic regression (an MLP with `hidden` widths otherwise), 1000 a round, 1 epoch of batch 10."""
    return (
        "data.dataset=synthetic", "data.partitioner=natural", f"data.num_clients={num_clients}",
        "model.name=mlp", f"model.hidden={hidden}", f"train.clients_per_round={SCALE_COHORT}",
        "train.local_epochs=1", "train.batch_size=10", "train.lr=0.01", f"strategy.name={strategy}",
        f"engine.client_state_memory={budget}",
    )


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
    "femnist": Workload(
        f"FEMNIST shape: {FEMNIST_WRITERS} writers of random 28x28 images (LEAF's sizes, 227 +- 89 each), "
        "35 per round, LEAF's CNN, batch 10, 1 local epoch",
        3,
        (
            "data.dataset=femnist",
            f"data.path={FEMNIST_SHAPED}",
            "data.partitioner=natural",
            "data.num_clients=0",
            "data.test_fraction=0.01",  # a small central test set, so evaluation stays cheap
            "model.name=femnist_cnn",
            "train.lr=0.004",
            "train.batch_size=10",
            "train.local_epochs=1",
            "train.clients_per_round=35",
            "strategy.name=fedavg",
        ),
        prepare=write_femnist_shaped,
        default=False,  # ~800k images: run it when named, `--workloads femnist`
    ),
}


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


def every_client(sim) -> list:
    """Every client's labelled (x, y) on the run's device, for the plain-PyTorch references,
    which hold a small fixed federation in memory as a hand-written loop would."""
    return [sim.population.client(cid, sim.device).data for cid in range(len(sim.population))]


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


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, for a results file's machine line."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")
WORKLOADS.update({  # benchmarks.scale's populations (and its Flower runs), run when named
    f"synthetic{n}": Workload(
        f"LEAF Synthetic(1, 1), {n:,} generated clients, logistic regression, {SCALE_COHORT} per round",
        10, scale_settings(n), default=False,
    )
    for n in SCALE_SIZES
})
