"""Robust aggregation under Byzantine clients: final test accuracy against the share of attackers.

    python -m benchmarks.robustness                 # 5 rules x 4 attacks x 0-30% attackers, 3 seeds
    python -m benchmarks.robustness --alpha 100     # the same near IID
    python -m benchmarks.robustness --seeds 1       # a quick look

Runs `experiments/robustness.toml` as two sweeps (resumable: rerun to finish): every rule without
attackers, and every rule against every attack at 10, 20 and 30% attackers. The table gives the
final test accuracy, mean ± std over seeds, per rule and attack. Written to
`benchmarks/results/robustness_alpha<alpha>.md` and `.json`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from benchmarks.tables import cells, mean_std, publish

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "experiments" / "robustness.toml"
RULES = ["fedavg", "fedmedian", "fedtrimmedavg", "krum", "bulyan"]
ATTACKS = ["sign_flip", "gaussian", "label_flip", "scaled"]
FRACTIONS = [0.1, 0.2, 0.3]
NAMES = {"fedavg": "FedAvg", "fedmedian": "median", "fedtrimmedavg": "trimmed mean (30%)",
         "krum": "Multi-Krum (f 9, m 21)", "bulyan": "Bulyan (f 6)"}


def sweep(out: Path, args: argparse.Namespace, *grid: str) -> None:
    command = [sys.executable, "-m", "fedsim.cli", "sweep", str(CONFIG), "--grid", f"strategy.name={','.join(RULES)}",
               *grid, "--set", f"data.alpha={args.alpha:g}", "--seeds", str(args.seeds), "--out", str(out),
               "-j", str(args.jobs)]
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label skew")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "sweeps" / "robustness", help="sweep folders")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    args = parser.parse_args()
    honest, attacked = args.work / f"alpha{args.alpha:g}-honest", args.work / f"alpha{args.alpha:g}-attacked"
    sweep(honest, args)
    sweep(attacked, args, "--grid", f"attack.name={','.join(ATTACKS)}",
          "--grid", f"attack.fraction={','.join(map(str, FRACTIONS))}")
    accuracy: dict[tuple[str, str, float], list[float]] = {}
    for values, s in cells(honest):
        for attack in ATTACKS:  # no attackers: the same runs for every attack's 0% column
            accuracy.setdefault((values["strategy.name"], attack, 0.0), []).append(s["final_accuracy"])
    for values, s in cells(attacked):
        key = (values["strategy.name"], values["attack.name"], values["attack.fraction"])
        accuracy.setdefault(key, []).append(s["final_accuracy"])
    fractions = [0.0, *FRACTIONS]
    lines = [
        "# Robust aggregation under Byzantine clients",
        "",
        f"`python -m benchmarks.robustness --alpha {args.alpha:g} --seeds {args.seeds}` ({CONFIG.relative_to(ROOT)}: "
        f"digits, 30 clients, Dirichlet {args.alpha:g}, every client every round, 20 rounds of 1 local epoch, an "
        "MLP). Final test accuracy, "
        "mean ± std over seeds, by the share of clients that attack.",
        "",
        "| attack | rule | " + " | ".join(f"{f:.0%} attackers" for f in fractions) + " |",
        "|---|---|" + "---:|" * len(fractions),
    ]
    rows = []
    for attack in ATTACKS:
        for rule in RULES:
            values = [accuracy.get((rule, attack, f), []) for f in fractions]
            rows.append({"attack": attack, "rule": rule, "fractions": fractions, "accuracy": values})
            lines.append(f"| {attack} | {NAMES[rule]} | " + " | ".join(mean_std(v) for v in values) + " |")
    publish(lines, rows, args.out / f"robustness_alpha{args.alpha:g}")


if __name__ == "__main__":
    main()
