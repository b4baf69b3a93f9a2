"""DP-FedAvg's accuracy against the privacy it spends, at three noise multipliers.

    python -m benchmarks.privacy                  # z = 0.3, 1, 3 and FedAvg without DP, 3 seeds
    python -m benchmarks.privacy --seeds 1        # a quick look

Runs `experiments/privacy.toml` as two sweeps (resumable: rerun to finish): DP-FedAvg over the
noise multipliers, and plain FedAvg on the same federation. The table gives per setting the
epsilon spent after the last round (delta 1e-5, Opacus's RDP accountant, from metrics.csv) and
the final test accuracy, mean ± std over seeds. Written to `benchmarks/results/privacy.md`/`.json`.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.tables import cells, mean_std, publish

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "experiments" / "privacy.toml"
NOISE = ["0.3", "1", "3"]


def sweep(out: Path, args: argparse.Namespace, *extra: str) -> None:
    command = [sys.executable, "-m", "fedsim.cli", "sweep", str(CONFIG), "--seeds", str(args.seeds),
               "--out", str(out), "-j", str(args.jobs), *extra]
    subprocess.run(command, check=True)


def final_epsilon(run: Path) -> float:
    with open(run / "metrics.csv", newline="") as f:
        return float(list(csv.DictReader(f))[-1]["epsilon"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "sweeps" / "privacy", help="sweep folders")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "privacy")
    args = parser.parse_args()
    private, plain = args.work / "dp", args.work / "no-dp"
    sweep(private, args, "--grid", f"strategy.dp_fedavg.noise_multiplier={','.join(NOISE)}")
    sweep(plain, args, "--set", "strategy.name=fedavg")
    rows = [{"setting": "FedAvg, no DP", "epsilon": None,
             "accuracy": [s["final_accuracy"] for _, s in cells(plain)]}]
    runs: dict[float, list[tuple[float, float]]] = {}  # noise multiplier -> (accuracy, epsilon) per seed
    for cell in json.loads((private / "sweep.json").read_text())["cells"]:
        summary = json.loads((private / cell["name"] / "summary.json").read_text())
        if summary["status"] == "finished":
            runs.setdefault(float(cell["values"]["strategy.dp_fedavg.noise_multiplier"]), []).append(
                (summary["final_accuracy"], final_epsilon(private / cell["name"])))
    for z in NOISE:
        found = runs.get(float(z), [])
        rows.append({"setting": f"DP-FedAvg, z = {z}, clip 1", "epsilon": found[0][1] if found else None,
                     "accuracy": [accuracy for accuracy, _ in found]})
    lines = [
        "# User-level differential privacy: accuracy against epsilon",
        "",
        f"`python -m benchmarks.privacy --seeds {args.seeds}` ({CONFIG.relative_to(ROOT)}: digits, 100 clients, "
        "Dirichlet 0.5, 10% of clients a round (q = 0.1), 30 rounds of 2 local epochs, an MLP). epsilon at "
        "delta = 1e-5 after the 30 rounds (Opacus's RDP accountant of the sampled Gaussian mechanism); final "
        "test accuracy, mean ± std over seeds.",
        "",
        "| setting | epsilon (delta 1e-5) | final test accuracy |",
        "|---|---:|---:|",
    ]
    for r in rows:
        eps = "∞ (no privacy)" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        lines.append(f"| {r['setting']} | {eps} | {mean_std(r['accuracy'])} |")
    publish(lines, rows, args.out)


if __name__ == "__main__":
    main()
