"""Accuracy cost of local learning in federated training: DGL, AugLocal and MAN against backprop FedAvg.

    python -m benchmarks.local_learning_accuracy     # experiments/local_learning.toml, alpha 0.5 and 0.1
    python -m benchmarks.local_learning_accuracy --alphas 0.5 0.1 1000 --rounds 50 --blocks 4
    python -m benchmarks.local_learning_accuracy --set data.dataset=mnist1d --set model.name=cnn \\
        --set "model.channels=[32,32,64,64]" --set train.lr=0.2

Every run is `experiments/local_learning.toml` (digits, a 4-hidden-layer MLP, 20 clients, 30
rounds of 2 local epochs, FedAvg) with the same data split, rounds, local steps and lr; only
`trainer.method` changes (`none` is backprop: `trainer.name=backprop`). K is `--blocks`, or the
most layers the model has if fewer. Reported per Dirichlet alpha: each method's final and best
test accuracy, the final accuracy minus backprop's in points (negative: worse), the client's peak
activation bytes, and the wall time (with memory metering on, as the config sets
`engine.track_memory`).
Target: the best method at most 3 points below backprop at K = 4.

Results go to `benchmarks/results/local_learning_accuracy.json` and `.md` (`--out` to change).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clients.local_learning import split_layers
from fedsim.config import load_config
from fedsim.engine import Simulation

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "local_learning.toml"
METHODS = ("none", "dgl", "auglocal", "man")
BACKPROP = "trainer={name='backprop'}"  # replaces the whole [trainer] table: backprop has no keys


def run(overrides: list[str]) -> dict:
    sim = Simulation(load_config(CONFIG, ["engine.device=cpu", *overrides]))
    summary = sim.run()
    return {
        "final_accuracy": summary["final_accuracy"],
        "best_accuracy": summary["best_accuracy"],
        "peak_activation_bytes": sim.history.records[-1]["peak_activation_bytes"],
        "wall_s": summary["wall_s"],
    }


def max_blocks(overrides: list[str]) -> int:
    """How many layers the configured model splits into (the most blocks it allows)."""
    sim = Simulation(load_config(CONFIG, ["engine.device=cpu", *overrides, BACKPROP]))
    return len(split_layers(sim.model))


def method_overrides(method: str, blocks: int) -> list[str]:
    """The `[trainer]` settings of one method: backprop for `none`, else local learning with K blocks."""
    if method == "none":
        return [BACKPROP]
    return [f"trainer.method={method}", f"trainer.blocks={blocks}"]


def add_comparison(rows: list[dict]) -> None:
    """Each run's final accuracy minus backprop's at the same alpha, in points (None without backprop)."""
    for row in rows:
        bp = next((r for r in rows if r["alpha"] == row["alpha"] and r["method"] == "backprop"), None)
        row["vs_backprop_points"] = (
            None if bp is None else 100 * (row["final_accuracy"] - bp["final_accuracy"])
        )


def markdown(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| alpha | method | final acc | best acc | vs backprop (points) | peak activations KB | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        diff = "" if r["vs_backprop_points"] is None else f"{r['vs_backprop_points']:+.1f}"
        lines.append(
            f"| {r['alpha']:g} | {r['method']} | {r['final_accuracy']:.4f} | {r['best_accuracy']:.4f} "
            f"| {diff} | {r['peak_activation_bytes'] / 1024:.0f} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.1])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=0, help="0: the config's")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "local_learning_accuracy"
    )
    args = parser.parse_args()
    common = list(args.overrides) + ([f"train.rounds={args.rounds}"] if args.rounds else [])
    blocks = min(args.blocks, max_blocks(common))
    rows = []
    for alpha in args.alphas:
        for method in args.methods:
            overrides = [*common, f"data.alpha={alpha}", *method_overrides(method, blocks)]
            row = {
                "alpha": alpha,
                "method": "backprop" if method == "none" else method,
                "blocks": blocks,
                **run(overrides),
            }
            rows.append(row)
            print(
                f"alpha {alpha:g}  {row['method']:9s} final {row['final_accuracy']:.4f}"
                f"  best {row['best_accuracy']:.4f}  {row['wall_s']:.0f} s",
                flush=True,
            )
    add_comparison(rows)
    config = load_config(CONFIG, common)
    widths = config.model["hidden"] if config.model.name == "mlp" else config.model["channels"]
    header = (
        f"{config.data.dataset}, {config.model.name} {widths}, {config.data.num_clients} clients, "
        f"{config.train.rounds} rounds x {config.train.local_epochs} local epochs, "
        f"batch {config.train.batch_size}, lr {config.train.lr}, {config.strategy['name']}, K = {blocks}"
    )
    table = markdown(rows, header)
    print(table)
    for alpha in args.alphas:
        diffs = [r["vs_backprop_points"] for r in rows if r["alpha"] == alpha and r["method"] != "backprop"]
        if diffs and None not in diffs:
            print(f"alpha {alpha:g}: best method {max(diffs):+.1f} points against backprop (target: >= -3)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"setup": header, "rows": rows}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
