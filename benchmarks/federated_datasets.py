"""Federation statistics of the standard benchmarks: clients and samples per client of each
config in `experiments/benchmarks/`, computed by the code that reports them for a run
(`Simulation.heterogeneity`, the start line and `summary.json`).

    python -m benchmarks.federated_datasets                  # the tiny copies of benchmarks/hub_copies.py
    python -m benchmarks.federated_datasets --path femnist=/data/femnist --path cifar10=/data/cifar10

A dataset given no `--path` is read from its tiny copy (written to a temporary folder); one
given a path is read from that local copy (save_to_disk) of the full dataset; `--hub` reads every
dataset from the Hugging Face hub instead. Writes benchmarks/results/federated_datasets.{md,json}.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks import hub_copies
from benchmarks.tables import publish

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "benchmarks"
OUT = ROOT / "benchmarks" / "results" / "federated_datasets"


def statistics(name: str, path: str) -> dict:
    """One benchmark's federation, as its config builds it from `path` ("" = the hub)."""
    from fedsim.config import load_config
    from fedsim.engine import Simulation

    sim = Simulation(load_config(CONFIGS / f"{name}.toml", [f"data.path={path}", "engine.device=cpu"]))
    h = sim.heterogeneity()
    d = sim.config.data
    return {
        "dataset": name,
        "source": path or hub_copies.HUB_NAMES[name],
        "partitioner": d.partitioner if d.partitioner == "natural" else f"{d.partitioner} (alpha={d.alpha})",
        "clients": int(h["clients"]),
        "train_samples": int(sim.population.sizes.sum()),
        "test_samples": len(sim.y_test),
        "mean_size": h["mean_size"],
        "std_size": h["std_size"],
        "min_size": h["min_size"],
        "max_size": h["max_size"],
        "label_tv": h["label_tv"],
        "classes": sim.population.num_classes,
        "input": ("tokens " if sim.population.vocab_size else "") + "x".join(map(str, sim.population.input_shape)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", action="append", default=[], help="NAME=PATH: a local copy of a full dataset")
    parser.add_argument("--hub", action="store_true", help="read every dataset from the Hugging Face hub")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    given = dict(item.split("=", 1) for item in args.path)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in hub_copies.WRITERS:
            path = "" if args.hub else given.get(name) or str(hub_copies.WRITERS[name](Path(tmp) / name))
            rows.append(statistics(name, path))
    lines = [
        "| dataset | read from | split | clients | train / test samples | samples per client (mean ± std, min..max) | label TV | classes | input |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        source = "tiny copy" if r["source"].startswith(tempfile.gettempdir()) else r["source"]
        lines.append(
            f"| {r['dataset']} | {source} | {r['partitioner']} | {r['clients']} | {r['train_samples']} / {r['test_samples']} "
            f"| {r['mean_size']:.1f} ± {r['std_size']:.1f}, {r['min_size']:.0f}..{r['max_size']:.0f} | {r['label_tv']:.3f} "
            f"| {r['classes']} | {r['input']} |"
        )
    lines += ["", "Train samples are the clients' training samples after the split; test samples the central test set."]
    publish(lines, rows, args.out)


if __name__ == "__main__":
    main()
