"""FedLabel against its four baselines with scarce labels (issue 7's "must show").

Every run is experiments/fedlabel.toml (digits, small CNN, 20 clients, Dirichlet(0.1), 10 per
round, 40 rounds) at 20% and 5% labels over seeds 0, 1, 2, with one method's overrides:

    fedlabel          FedLabel as configured (select the more confident expert, consistency term)
    fedavg_labelled   FedAvg on the labelled samples only
    global_expert     expert=global, lambda_0=0: FixMatch-style, the global model labels
    local_expert      expert=local, lambda_0=0: the client's own labelled-data model labels
    fedavg_full       FedAvg with 100% labels (the same for both ratios: run once per seed)

and two ablations on request (`--methods`): select_without_consistency (lambda_0=0) and
global_with_consistency (expert=global), to see where FedLabel's gain comes from.

It prints a Markdown table (final test accuracy mean +- std over seeds, the mean of the last five
rounds, and the last round's pseudo-label diagnostics) and writes benchmarks/results/fedlabel.json
(every run) and fedlabel.md (the table). Runs go to `--workers` processes with one torch thread
each, so two workers fill two cores.

    python benchmarks/fedlabel.py                       # 27 runs
    python benchmarks/fedlabel.py --quick               # 2 rounds, 1 seed: checks the script in seconds
    python benchmarks/fedlabel.py --set trainer.augment=shift --out /tmp/fedlabel_shift
    python benchmarks/fedlabel.py --methods select_without_consistency,global_with_consistency --out /tmp/ablation
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "fedlabel.toml"
RATIOS = (0.2, 0.05)
SEEDS = (0, 1, 2)
METHODS = {
    "fedlabel": [],
    "fedavg_labelled": ["trainer={name='backprop'}"],
    "global_expert": ["trainer.expert=global", "trainer.lambda_0=0"],
    "local_expert": ["trainer.expert=local", "trainer.lambda_0=0"],
    "fedavg_full": ["trainer={name='backprop'}", "data.label_ratio=1"],
    "select_without_consistency": ["trainer.lambda_0=0"],
    "global_with_consistency": ["trainer.expert=global"],
}
MUST_SHOW = "fedlabel,fedavg_labelled,global_expert,local_expert,fedavg_full"
DIAGNOSTICS = ("pseudo_coverage", "pseudo_accuracy", "local_expert_share", "expert_agreement")


def run_one(method: str, ratio: float, seed: int, overrides: list[str]) -> dict:
    """One experiment in this (worker) process; returns its accuracies and last-round diagnostics."""
    import torch

    from fedsim.config import load_config
    from fedsim.engine import Simulation

    torch.set_num_threads(1)
    config = load_config(
        EXPERIMENT,
        [f"seed={seed}", f"data.label_ratio={ratio}", "engine.device=cpu", *overrides, *METHODS[method]],
    )
    sim = Simulation(config)
    summary = sim.run()
    records = sim.history.records
    return {
        "method": method,
        "label_ratio": ratio,
        "seed": seed,
        "final_accuracy": summary["final_accuracy"],
        "last5_accuracy": float(np.mean([r["test_accuracy"] for r in records[-5:]])),
        "wall_s": summary["wall_s"],
        **{k: records[-1][k] for k in DIAGNOSTICS if k in records[-1]},
    }


def plan(methods: list[str], seeds: tuple[int, ...]) -> list[tuple[str, float, int]]:
    """Every (method, ratio, seed) to run; fedavg_full once per seed (its ratio is fixed at 1)."""
    jobs = [(m, r, s) for r in RATIOS for m in methods if m != "fedavg_full" for s in seeds]
    return jobs + [("fedavg_full", 1.0, s) for s in seeds if "fedavg_full" in methods]


def summarise(runs: list[dict], methods: list[str]) -> list[dict]:
    """Per (method, ratio): accuracy mean and std over seeds (ddof 1), diagnostics' means."""
    rows = []
    for method in methods:
        for ratio in RATIOS:
            mine = [
                r
                for r in runs
                if r["method"] == method and r["label_ratio"] == (1.0 if method == "fedavg_full" else ratio)
            ]
            final = np.array([r["final_accuracy"] for r in mine])
            row = {
                "method": method,
                "label_ratio": ratio,
                "seeds": len(mine),
                "final_mean": float(final.mean()),
                "final_std": float(final.std(ddof=1)) if len(final) > 1 else 0.0,
                "last5_mean": float(np.mean([r["last5_accuracy"] for r in mine])),
            }
            for key in DIAGNOSTICS:
                values = [r[key] for r in mine if key in r]
                row[key] = float(np.nanmean(values)) if values and not np.all(np.isnan(values)) else None
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    def cell(value):
        return "-" if value is None else f"{value:.3f}"

    header = ["labels", "method", "final accuracy (mean +- std)", "last-5 mean"]
    header += ["coverage", "pseudo-label acc.", "local share", "agreement"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for ratio in RATIOS:
        for row in (r for r in rows if r["label_ratio"] == ratio):
            name = row["method"] + (" (100% labels)" if row["method"] == "fedavg_full" else "")
            lines.append(
                f"| {ratio:.0%} | {name} | {row['final_mean']:.3f} +- {row['final_std']:.3f} "
                f"| {row['last5_mean']:.3f} | " + " | ".join(cell(row[k]) for k in DIAGNOSTICS) + " |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes (one torch thread each)")
    parser.add_argument(
        "--quick", action="store_true", help="2 rounds, seed 0: check the script, not the numbers"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    parser.add_argument("--methods", default=MUST_SHOW, help=f"comma-separated, of: {', '.join(METHODS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fedlabel")
    args = parser.parse_args(argv)
    overrides = [*(["train.rounds=2", "data.num_clients=10"] if args.quick else []), *args.overrides]
    seeds = (0,) if args.quick else SEEDS
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")

    start = time.perf_counter()
    jobs = plan(methods, seeds)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        runs = list(pool.map(run_one, *zip(*jobs), [overrides] * len(jobs)))
    wall = time.perf_counter() - start
    rows = summarise(runs, methods)
    table = markdown(rows)
    print(table)
    print(
        f"{len(runs)} runs in {wall:.0f} s on {args.workers} workers "
        f"({os.cpu_count()} cores, 1-minute load {os.getloadavg()[0]:.1f})"
    )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "experiment": str(EXPERIMENT.relative_to(ROOT)),
        "overrides": overrides,
        "methods": {m: METHODS[m] for m in methods},
        "seeds": list(seeds),
        "wall_s": wall,
        "workers": args.workers,
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1m_at_end": os.getloadavg()[0],
            "platform": platform.platform(),
        },
    }
    args.out.with_suffix(".json").write_text(
        json.dumps({**meta, "summary": rows, "runs": runs}, indent=2) + "\n"
    )
    args.out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
